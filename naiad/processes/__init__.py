"""The process boundary: model instances in processes of their own, their messages, shared memory and supervision."""
