"""Where model repositories are read from: a local folder or an object store, behind one small interface."""
