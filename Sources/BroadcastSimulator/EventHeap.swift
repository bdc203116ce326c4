// The simulator's agenda: a binary min-heap on (time, insertion order), so events at the same instant
// run in the order they were posted and every run is deterministic.

struct EventHeap<Element> {
    private var items: [(at: Double, seq: UInt64, element: Element)] = []
    private var seq: UInt64 = 0

    var isEmpty: Bool { items.isEmpty }
    var count: Int { items.count }

    mutating func push(_ at: Double, _ element: Element) {
        seq += 1
        items.append((at, seq, element))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(i, parent) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (at: Double, element: Element)? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && less(l, m) { m = l }
            if r < items.count && less(r, m) { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return (top.at, top.element)
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        (items[a].at, items[a].seq) < (items[b].at, items[b].seq)
    }
}
