import Glibc

/// A stack of work items served to a fixed set of threads. Last in, first out: the entries of a
/// directory are done before the rest of its listing is read, so the walk goes depth first and
/// the number of pending items stays bounded by (depth × batch size), whatever the tree's size.
///
/// Threads, not Swift tasks: the work is blocking syscalls, and the cooperative pool has one thread
/// per core.
final class WorkPool<Item>: @unchecked Sendable {
    // Heap-allocated: a pthread object must not move, and `&storedProperty` promises no address.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var stack: [Item] = []
    private var busy = 0
    private var stopped = false
    /// The most items ever pending at once: what bounds the walk's memory.
    private var peak = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    var peakPending: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return peak
    }

    func push(_ item: Item) {
        pthread_mutex_lock(mutex)
        stack.append(item)
        peak = max(peak, stack.count)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Pushes in reverse, so the first of `items` is the next one served.
    func push(contentsOf items: [Item]) {
        guard !items.isEmpty else { return }
        pthread_mutex_lock(mutex)
        stack.append(contentsOf: items.reversed())
        peak = max(peak, stack.count)
        if items.count == 1 { pthread_cond_signal(condition) } else { pthread_cond_broadcast(condition) }
        pthread_mutex_unlock(mutex)
    }

    /// Drops every pending item and wakes all threads so that `run` returns once the items being
    /// worked on are done.
    func stop() {
        pthread_mutex_lock(mutex)
        stopped = true
        stack.removeAll()
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Runs `body` on `threads` threads until the stack is empty and no item is in progress (an item
    /// in progress may push more), or until `stop()`. Returns when every thread has finished.
    func run(threads: Int, _ body: @escaping @Sendable (Item) -> Void) {
        let count = max(1, threads)
        var handles: [pthread_t] = []
        for _ in 1..<count {
            if let handle = Thread.spawn({ self.serve(body) }) { handles.append(handle) }
        }
        serve(body)  // the calling thread works too
        for handle in handles { pthread_join(handle, nil) }
    }

    private func serve(_ body: (Item) -> Void) {
        pthread_mutex_lock(mutex)
        while true {
            if stopped { break }
            if let item = stack.popLast() {
                busy += 1
                pthread_mutex_unlock(mutex)
                body(item)
                pthread_mutex_lock(mutex)
                busy -= 1
                if busy == 0 && stack.isEmpty { pthread_cond_broadcast(condition) }
                continue
            }
            if busy == 0 { break }
            pthread_cond_wait(condition, mutex)
        }
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }
}

enum Thread {
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts a joinable POSIX thread with a 1 MiB stack (the walk does not recurse).
    static func spawn(_ body: @escaping () -> Void) -> pthread_t? {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, 1 << 20)
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, &attributes, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if result != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            return nil
        }
        return handle
    }
}

/// A mutex around a value, for state the walk's threads share.
final class Locked<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
