import FerryJobs
import Foundation
import Prometheus

/// Prometheus metrics at `/metrics`: HTTP requests, tasks by state (read from the store at each
/// scrape, so workers elsewhere count too), bytes moved and phase durations of the tasks this
/// server ran.
public final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let durationBuckets: [Duration] = [.milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .milliseconds(500),
                                       .seconds(1), .seconds(2), .seconds(5), .seconds(10)]
    let phaseBuckets: [Duration] = [.milliseconds(10), .milliseconds(100), .seconds(1), .seconds(10), .seconds(60), .seconds(600), .seconds(3600)]

    public init() {}

    func request(method: String, route: String, status: Int, duration: Duration) {
        let labels = [("method", method), ("route", route), ("status", String(status))]
        registry.makeCounter(name: "ferry_http_requests_total", labels: labels, help: "HTTP requests served").increment()
        registry.makeDurationHistogram(name: "ferry_http_request_duration_seconds", labels: [("route", route)], buckets: durationBuckets,
                                       help: "Time to answer HTTP requests").recordNanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    func taskCompleted(_ task: TaskRecord, events: [TaskEvent]) async {
        if let plan = task.plan {
            registry.makeCounter(name: "ferry_bytes_moved_total", labels: [("kind", task.kind.rawValue), ("strategy", plan.strategy)],
                                 help: "Bytes of data in tasks completed by this server").increment(by: Int64(clamping: plan.bytes))
        }
        registry.makeCounter(name: "ferry_tasks_completed_total", labels: [("kind", task.kind.rawValue)], help: "Tasks completed by this server").increment()
        // One sample per phase the task went through: the time from each of its events to the
        // next, added up over the phase's events (a copy resumed, a phase entered again after a
        // retry), so that the histogram's count is tasks, not events.
        var spent: [TaskStatus: Double] = [:]
        for (event, next) in zip(events, events.dropFirst()) {
            spent[event.status, default: 0] += max(0, next.at.timeIntervalSince(event.at))
        }
        for (phase, seconds) in spent where !phase.isTerminal {
            registry.makeDurationHistogram(name: "ferry_task_phase_duration_seconds", labels: [("phase", phase.rawValue)],
                                           buckets: phaseBuckets, help: "Time tasks spent in each phase")
                .recordNanoseconds(Int64(min(seconds, 1e9) * 1e9))
        }
    }

    /// The exposition text, with the task gauges refreshed from the store first.
    func render(store: any TaskStore) async -> String {
        if let counts = try? await store.countByStatus() {
            for status in TaskStatus.allCases {
                registry.makeGauge(name: "ferry_tasks", labels: [("state", status.rawValue)], help: "Tasks by state")
                    .set(Double(counts[status] ?? 0))
            }
        }
        return registry.emitToString()
    }
}
