import FerrySystem
import Glibc

/// One page of a directory in a chosen order, read without holding the directory in memory: the
/// listing streams every entry once (`getdents64`) and keeps only the best `offset + limit` in a
/// bounded heap. Sorting by name needs no `statx` at all (directories first, then bytewise by name);
/// sorting by size, time or owner costs one `statx` per entry.
struct DirectoryPage {
    struct Item {
        var name: ByteString
        var isDirectory: Bool
        var number: UInt64
        var text: String
    }

    var entries: [Item]
    var total: Int

    static func read(_ directory: FileDescriptor, offset: Int, limit: Int, sort: ListingSort, descending: Bool,
                     owner: (UInt32) -> String = { String($0) }) throws(SystemError) -> DirectoryPage {
        let stream = DirectoryStream(directory, bufferSize: 256 * 1024)
        let keep = offset + limit
        // `precedes(a, b)`: a comes first on the page. The heap's top is the item that would be
        // dropped first (the last of those kept).
        let precedes: (Item, Item) -> Bool = { a, b in
            if a.isDirectory != b.isDirectory { return a.isDirectory }
            let ordered: Bool
            switch sort {
            case .name: ordered = a.name.lexicographicallyPrecedes(b.name)
            case .size, .modified:
                ordered = a.number != b.number ? a.number < b.number : a.name.lexicographicallyPrecedes(b.name)
            case .owner:
                ordered = a.text != b.text ? a.text < b.text : a.name.lexicographicallyPrecedes(b.name)
            }
            return descending ? !ordered && a.name != b.name : ordered
        }
        var heap = BoundedHeap(capacity: keep, precedes: precedes)
        var total = 0
        var failure: SystemError?
        try stream.scan { name, direntKind throws(SystemError) in
            total += 1
            var kind = direntKind
            if sort == .name && kind != .unknown {
                // The common case, a million times over: most names cannot make the page; tell
                // without copying them (directories come first, then bytes compared).
                if heap.isFull, let last = heap.last {
                    let isDirectory = kind == .directory
                    if isDirectory != last.isDirectory {
                        if !isDirectory { return }  // a file after the directories kept
                    } else {
                        let order = Self.compare(name, last.name)
                        if descending ? order <= 0 : order >= 0 { return }
                    }
                }
                heap.offer(Item(name: Array(name), isDirectory: kind == .directory, number: 0, text: ""))
                return
            }
            let owned = Array(name)
            let status: FileStatus
            do { status = try directory.status(owned) } catch let error as SystemError {
                if error.code == .notFound { total -= 1; return }  // removed meanwhile
                failure = error
                return
            } catch { return }
            kind = status.kind
            var number: UInt64 = 0
            var text = ""
            switch sort {
            case .size: number = status.size
            case .modified: number = UInt64(max(0, status.modificationTime.seconds)) &* 1_000_000_000 &+ UInt64(status.modificationTime.nanoseconds)
            case .owner: text = owner(status.uid)
            case .name: break
            }
            heap.offer(Item(name: owned, isDirectory: kind == .directory, number: number, text: text))
        }
        if let failure { throw failure }
        let sorted = heap.sortedItems()
        let page = offset < sorted.count ? Array(sorted[offset...]) : []
        return DirectoryPage(entries: page, total: total)
    }
}

extension DirectoryPage {
    /// memcmp order, shorter first on a common prefix: the order of `lexicographicallyPrecedes`.
    static func compare(_ a: UnsafeBufferPointer<UInt8>, _ b: ByteString) -> Int {
        let common = min(a.count, b.count)
        let order = b.withUnsafeBufferPointer { memcmp(a.baseAddress!, $0.baseAddress!, common) }
        if order != 0 { return Int(order) }
        return a.count - b.count
    }
}

/// Keeps the `capacity` items that come first under `precedes`; the root is the one that comes last.
struct BoundedHeap {
    private var items: [DirectoryPage.Item] = []
    let capacity: Int
    let precedes: (DirectoryPage.Item, DirectoryPage.Item) -> Bool

    init(capacity: Int, precedes: @escaping (DirectoryPage.Item, DirectoryPage.Item) -> Bool) {
        self.capacity = capacity
        self.precedes = precedes
        items.reserveCapacity(min(capacity, 4096))
    }

    mutating func offer(_ item: DirectoryPage.Item) {
        if items.count < capacity {
            items.append(item)
            siftUp(items.count - 1)
        } else if capacity > 0, precedes(item, items[0]) {
            items[0] = item
            siftDown(0)
        }
    }

    var isFull: Bool { items.count >= capacity }
    /// The item that would be dropped first: the last of those kept.
    var last: DirectoryPage.Item? { items.first }

    /// `a` belongs above `b` in the heap: it would be dropped before `b`.
    private func above(_ a: Int, _ b: Int) -> Bool { precedes(items[b], items[a]) }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard above(child, parent) else { return }
            items.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1, right = left + 1
            var top = parent
            if left < items.count && above(left, top) { top = left }
            if right < items.count && above(right, top) { top = right }
            if top == parent { return }
            items.swapAt(parent, top)
            parent = top
        }
    }

    func sortedItems() -> [DirectoryPage.Item] { items.sorted(by: precedes) }
}
