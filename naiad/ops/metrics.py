"""Triton's Prometheus metrics: every family with Triton's name, type, help text and labels, rendered at scrape time
from the statistics the core keeps (nothing counted twice), with the opt-in latency summaries and histogram and the
CPU and GPU gauges."""

from __future__ import annotations

from naiad.config.settings import MetricsSettings
from naiad.core.server import InferenceServer, ModelStatistics, Observer
from naiad.ops.exposition import Exposition, labels, number
from naiad.ops.latency import BucketCounts, WindowQuantiles
from naiad.ops.system_metrics import SystemMetrics, SystemReading

# Triton's default bounds of the first-response histogram, in milliseconds.
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)

_SUCCESS_HELP = "Number of successful inference requests, all batch sizes"
_FAILURE_HELP = "Number of failed inference requests, all batch sizes"
_PENDING_HELP = "Instantaneous number of pending requests awaiting execution per-model."
_FIRST_RESPONSE_HELP = "Duration from request to first response in milliseconds"
_RESTARTS_HELP = "Number of times an instance process of the model died and was started again"
_LIVE_HELP = "Instances of the model able to execute now (one whose process is being started again is not)"
_NOT_CACHED = "(does not include cached requests)"
_CACHED = "(includes cached requests)"

# The latency phases: the counter's and the summary's names and help texts. The request phase is successful
# requests only, as in Triton.
_PHASES = ("request", "queue", "compute_input", "compute_infer", "compute_output")
_DURATION_COUNTERS = {
    "request": ("nv_inference_request_duration_us", f"Cumulative inference request duration in microseconds {_CACHED}"),
    "queue": ("nv_inference_queue_duration_us", f"Cumulative inference queuing duration in microseconds {_CACHED}"),
    "compute_input": (
        "nv_inference_compute_input_duration_us",
        f"Cumulative compute input duration in microseconds {_NOT_CACHED}",
    ),
    "compute_infer": (
        "nv_inference_compute_infer_duration_us",
        f"Cumulative compute inference duration in microseconds {_NOT_CACHED}",
    ),
    "compute_output": (
        "nv_inference_compute_output_duration_us",
        f"Cumulative inference compute output duration in microseconds {_NOT_CACHED}",
    ),
}
_SUMMARIES = {
    "request": ("nv_inference_request_summary_us", f"Summary of inference request duration in microseconds {_CACHED}"),
    "queue": ("nv_inference_queue_summary_us", f"Summary of inference queuing duration in microseconds {_CACHED}"),
    # Triton's summaries of the compute phases carry the counters' help texts.
    "compute_input": ("nv_inference_compute_input_summary_us", _DURATION_COUNTERS["compute_input"][1]),
    "compute_infer": ("nv_inference_compute_infer_summary_us", _DURATION_COUNTERS["compute_infer"][1]),
    "compute_output": ("nv_inference_compute_output_summary_us", _DURATION_COUNTERS["compute_output"][1]),
}


# Triton's GPU families: name, type, help text, and the field of `GpuReading` each reports.
_GPU_FAMILIES = (
    ("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)", "utilization"),
    ("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes", "memory_total"),
    ("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes", "memory_used"),
    ("nv_gpu_power_usage", "gauge", "GPU power usage in watts", "power_usage"),
    ("nv_gpu_power_limit", "gauge", "GPU power management limit in watts", "power_limit"),
    ("nv_energy_consumption", "counter", "GPU energy consumption in joules since the Triton Server started", "energy"),
)


class _Latencies:
    """The opt-in latency state of one model version, fed by the observers the core calls."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.windows = {phase: WindowQuantiles() for phase in _PHASES} if settings.summary_latencies else {}
        self.first_response = BucketCounts(FIRST_RESPONSE_BUCKETS_MS) if settings.histogram_latencies else None

    def attach(self, model: ModelStatistics) -> None:
        windows = self.windows
        compute: tuple[Observer, Observer, Observer] | None = None
        if windows:
            compute = (
                _summary_observer(windows["compute_input"]),
                _summary_observer(windows["compute_infer"]),
                _summary_observer(windows["compute_output"]),
            )
        model.stats.observe(self._request_observer(), _summary_observer(windows["queue"]) if windows else None, compute)

    def _request_observer(self) -> Observer | None:
        observers: list[Observer] = []
        window = self.windows.get("request")
        if window is not None:
            observers.append(_summary_observer(window))
        if self.first_response is not None:
            observers.append(_histogram_observer(self.first_response))
        if len(observers) < 2:
            return observers[0] if observers else None
        summary, histogram = observers

        def both(ns: int, count: int) -> None:
            summary(ns, count)
            histogram(ns, count)

        return both


def _summary_observer(window: WindowQuantiles) -> Observer:
    def observe(ns: int, count: int) -> None:
        window.observe(ns // 1000, count)  # microseconds, as Triton observes them

    return observe


def _histogram_observer(histogram: BucketCounts) -> Observer:
    def observe(ns: int, count: int) -> None:
        histogram.observe(ns / 1e6, count)  # milliseconds

    return observe


class MetricsRegistry:
    """The metrics of one server: renders Triton's exposition from the server's statistics on each scrape.

    Build it after the models load and before requests arrive: with summaries or the histogram on, it asks each
    model version's statistics to hand it every latency they record."""

    def __init__(self, server: InferenceServer, settings: MetricsSettings, system: SystemMetrics | None) -> None:
        self._server = server
        self._settings = settings
        self._system = system
        self._latencies: dict[tuple[str, int], _Latencies] = {}
        if settings.summary_latencies or settings.histogram_latencies:
            for model in server.model_statistics():
                self._latencies_of(model)

    def _latencies_of(self, model: ModelStatistics) -> _Latencies:
        key = (model.name, model.version)
        latencies = self._latencies.get(key)
        if latencies is None:
            latencies = self._latencies[key] = _Latencies(self._settings)
            latencies.attach(model)
        return latencies

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, now."""
        settings = self._settings
        models = self._server.model_statistics()
        names = [labels(("model", m.name), ("version", str(m.version))) for m in models]
        out = Exposition()
        family = out.family("nv_inference_request_success", "counter", _SUCCESS_HELP)
        for model, label_text in zip(models, names, strict=True):
            family.add(model.stats.success.count, label_text)
        family = out.family("nv_inference_request_failure", "counter", _FAILURE_HELP)
        for model in models:
            for reason, count in model.stats.failures().items():
                family.add(count, labels(("model", model.name), ("reason", reason), ("version", str(model.version))))
        family = out.family("nv_inference_count", "counter", f"Number of inferences performed {_NOT_CACHED}")
        for model, label_text in zip(models, names, strict=True):
            family.add(model.stats.inference_count, label_text)
        family = out.family("nv_inference_exec_count", "counter", f"Number of model executions performed {_NOT_CACHED}")
        for model, label_text in zip(models, names, strict=True):
            family.add(model.stats.execution_count, label_text)
        if settings.counter_latencies:
            for phase in _PHASES:
                name, help_text = _DURATION_COUNTERS[phase]
                family = out.family(name, "counter", help_text)
                for model, label_text in zip(models, names, strict=True):
                    family.add(_recorded(model, phase)[1] // 1000, label_text)
        family = out.family("nv_inference_pending_request_count", "gauge", _PENDING_HELP)
        for model, label_text in zip(models, names, strict=True):
            family.add(model.pending, label_text)
        family = out.family("nv_model_load_duration_secs", "gauge", "Model load time in seconds")
        for model, label_text in zip(models, names, strict=True):
            family.add(model.load_seconds, label_text)
        # naiad's own (Triton neither restarts a dead stub nor counts one)
        family = out.family("naiad_model_instance_restarts", "counter", _RESTARTS_HELP)
        for model, label_text in zip(models, names, strict=True):
            if model.live_instances is not None:
                family.add(model.stats.restarts, label_text)
        family = out.family("naiad_model_instances_live", "gauge", _LIVE_HELP)
        for model, label_text in zip(models, names, strict=True):
            if model.live_instances is not None:
                family.add(model.live_instances, label_text)
        if self._system is not None:
            _system_gauges(out, self._system.reading)
        if settings.histogram_latencies:
            self._histogram(out, models, names)
        if settings.summary_latencies:
            self._summaries(out, models, names)
        return out.render()

    def _histogram(self, out: Exposition, models: list[ModelStatistics], names: list[str]) -> None:
        family = out.family("nv_inference_first_response_histogram_ms", "histogram", _FIRST_RESPONSE_HELP)
        for model, label_text in zip(models, names, strict=True):
            histogram = self._latencies_of(model).first_response
            if histogram is None:
                continue
            count, ns = _recorded(model, "request")
            family.add(count, label_text, "_count")
            family.add(ns / 1e6, label_text, "_sum")
            for bound, below in zip(histogram.bounds, histogram.cumulative(), strict=True):
                family.add(below, f"{label_text},{labels(('le', number(bound)))}", "_bucket")
            family.add(count, f"{label_text},{labels(('le', '+Inf'))}", "_bucket")

    def _summaries(self, out: Exposition, models: list[ModelStatistics], names: list[str]) -> None:
        wanted = [quantile for quantile, _ in self._settings.summary_quantiles]
        quantile_labels = [labels(("quantile", number(quantile))) for quantile in wanted]
        for phase in _PHASES:
            name, help_text = _SUMMARIES[phase]
            family = out.family(name, "summary", help_text)
            for model, label_text in zip(models, names, strict=True):
                window = self._latencies_of(model).windows.get(phase)
                if window is None:
                    continue
                count, ns = _recorded(model, phase)
                family.add(count, label_text, "_count")
                family.add(ns // 1000, label_text, "_sum")
                for quantile_text, value in zip(quantile_labels, window.quantiles(wanted), strict=True):
                    family.add(value, f"{label_text},{quantile_text}")


def _recorded(model: ModelStatistics, phase: str) -> tuple[int, int]:
    """(count, nanoseconds) the core recorded for a phase; the request phase is successful requests."""
    duration = getattr(model.stats, "success" if phase == "request" else phase)
    return duration.count, duration.ns


def _system_gauges(out: Exposition, reading: SystemReading) -> None:
    gpus = reading.gpus
    gpu_labels = [labels(("gpu_uuid", gpu.uuid)) for gpu in gpus]
    for name, kind, help_text, field in _GPU_FAMILIES:
        family = out.family(name, kind, help_text)
        for gpu, label_text in zip(gpus, gpu_labels, strict=True):
            family.add(getattr(gpu, field), label_text)
    cpu = reading.cpu
    if cpu is not None:
        out.family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]").add(cpu.utilization)
        out.family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes").add(cpu.memory_total)
        out.family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes").add(cpu.memory_used)
