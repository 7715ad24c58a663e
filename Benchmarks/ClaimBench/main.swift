import FerryJobs
import FerryJobsPostgres
import Foundation

// Task claims per second with N concurrent workers: `ferry-claim-bench --database URL [--tasks N]
// [--workers W] [--separate-stores]`. Queues N tasks, then W workers claim one task at a time (a
// lease each) until the queue is empty; prints claims/s and checks that no task was claimed twice.
// The workers share one store (as the W workers of one `ferry worker --concurrency W` do), or with
// --separate-stores each opens its own, as W worker processes would: on PostgreSQL each then has its
// own connection pool, and no two workers' claims can share a statement. Either way the workers run
// in this one process, on the same cores as the database server.

let arguments = Array(CommandLine.arguments.dropFirst())
func option(_ name: String, _ fallback: String) -> String {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return fallback }
    return arguments[index + 1]
}
let url = try DatabaseURL(option("--database", "sqlite:///tmp/ferry-claim-bench.sqlite"))
let taskCount = Int(option("--tasks", "20000")) ?? 20000
let workers = Int(option("--workers", "8")) ?? 8
let separateStores = arguments.contains("--separate-stores")

func open() async throws -> any TaskStore {
    switch url {
    case .sqlite(let path):
        return try SQLiteTaskStore(path: path)
    case .postgres(let host, let port, let user, let password, let database, let tls):
        return try await PostgresTaskStore(host: host, port: port, user: user, password: password, database: database, tls: tls)
    }
}
if case .sqlite(let path) = url {
    for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
}
let store = try await open()
var stores: [any TaskStore] = []
for _ in 0..<workers { stores.append(separateStores ? try await open() : store) }
let request = NewTask(kind: .move, sources: [StoredPath("/bench/src")], destination: StoredPath("/bench/dst"), owner: "bench")
try await withThrowingTaskGroup(of: Void.self) { group in
    for w in 0..<8 {
        group.addTask { for _ in stride(from: w, to: taskCount, by: 8) { _ = try await store.create(request) } }
    }
    try await group.waitForAll()
}
let clock = ContinuousClock()
let start = clock.now
let claimed = try await withThrowingTaskGroup(of: [String].self) { group in
    for worker in 0..<workers {
        let store = stores[worker]
        group.addTask {
            var mine: [String] = []
            while true {
                let batch = try await store.claim(worker: "bench-\(worker)", limit: 1, lease: .seconds(600))
                guard let task = batch.first else { return mine }
                mine.append(task.id)
            }
        }
    }
    var all: [String] = []
    for try await ids in group { all += ids }
    return all
}
let elapsed = clock.now - start  // one reading: two would mix two instants' seconds and fractions
let seconds = Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds)
let engine: String
if case .sqlite = url { engine = "sqlite" } else { engine = "postgres" }
print(String(format: "%@: %d claims by %d workers%@ in %.2f s = %.0f claims/s (duplicates: %d)",
             engine, claimed.count, workers, separateStores ? " (a store each)" : "", seconds, Double(claimed.count) / seconds,
             claimed.count - Set(claimed).count))
for opened in [store] + (separateStores ? stores : []) {
    if let postgres = opened as? PostgresTaskStore { await postgres.shutdown() }
}
exit(claimed.count == taskCount && Set(claimed).count == taskCount ? 0 : 1)
