// Guest RAM: one mapping, preallocated before the first guest instruction (hugetlbfs pages
// when asked, else transparent huge pages: MADV_HUGEPAGE first, then MADV_POPULATE_WRITE), populated
// in parallel by threads pinned to the guest's own CPUs so each slice is first touched where it runs.
// Guest RAM a vhost-user backend (virtiofsd) must see lives in a memfd mapped shared, whose descriptor
// goes to the backend; otherwise it is private anonymous memory.
// Every access from the VMM goes through `slice(gpa, count)`, which checks bounds: a guest-supplied
// address can never reach outside the mapping.

import CLinux
#if canImport(Glibc)
import Glibc
#endif

public final class GuestMemory: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: UInt64
    public let hugetlb: Bool
    /// The memfd behind shared guest RAM (nil: private memory, no backend can map it).
    public let fd: Int32?
    /// Seconds spent populating.
    public private(set) var populateSeconds = 0.0

    static let MADV_POPULATE_WRITE: Int32 = 23
    static let MAP_HUGE_2MB: Int32 = 21 << 26  // MAP_HUGE_SHIFT 26, log2(2 MiB)

    /// Maps `size` bytes (a multiple of 2 MiB); `shared`: in a memfd another process can map.
    public init(size: UInt64, hugetlb: Bool, shared: Bool = false) throws {
        guard size >= 2 << 20, size % (2 << 20) == 0 else { throw VMMError.config("guest memory must be a multiple of 2 MiB (got \(size) bytes)") }
        self.size = size
        self.hugetlb = hugetlb
        var memfd: Int32 = -1
        if shared {
            memfd = clinux_memfd("slurm-vm-guest-ram", size, hugetlb ? 1 : 0)
            guard memfd >= 0 else {
                throw VMMError.memory(
                    "cannot create \(size >> 20) MiB of shared guest memory: \(String(cString: strerror(-memfd)))\(hugetlb ? " (is vm.nr_hugepages large enough?)" : "")"
                )
            }
        }
        // 2 MiB-aligned memory, so KVM maps the guest with large pages: reserve 2 MiB more, place the
        // memory at the aligned address inside (hugetlb pages must be), give back both ends.
        let align = 2 << 20
        let extra = align
        let reserve = mmap(nil, Int(size) + extra, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let reserve, reserve != MAP_FAILED else {
            if memfd >= 0 { close(memfd) }
            throw VMMError.memory("cannot reserve \(size >> 20) MiB of address space for guest memory: \(String(cString: strerror(errno)))")
        }
        let addr = UInt(bitPattern: reserve)
        let aligned = (addr + UInt(align - 1)) & ~UInt(align - 1)
        let head = Int(aligned - addr)
        if head > 0 { munmap(reserve, head) }
        if extra - head > 0 { munmap(reserve + head + Int(size), extra - head) }
        let at = reserve + head
        var flags = MAP_FIXED | MAP_NORESERVE
        if memfd >= 0 {
            flags |= MAP_SHARED
        } else {
            flags |= MAP_PRIVATE | MAP_ANONYMOUS
            if hugetlb { flags |= MAP_HUGETLB | Self.MAP_HUGE_2MB }
        }
        let p = mmap(at, Int(size), PROT_READ | PROT_WRITE, flags, memfd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            munmap(at, Int(size))
            if memfd >= 0 { close(memfd) }
            throw VMMError.memory(
                hugetlb
                    ? "cannot map \(size >> 20) MiB of 2 MiB hugepages: \(String(cString: strerror(e))) (is vm.nr_hugepages large enough?)"
                    : "cannot map \(size >> 20) MiB of guest memory: \(String(cString: strerror(e)))")
        }
        base = p
        fd = memfd >= 0 ? memfd : nil
        if !hugetlb { _ = madvise(p, Int(size), MADV_HUGEPAGE) }  // before populating, or the pages come as 4 KiB
        _ = madvise(p, Int(size), MADV_DONTDUMP)
    }

    deinit {
        munmap(base, Int(size))
        if let fd { close(fd) }
    }

    /// Faults every page in now, a slice per CPU in `cpus`, each thread pinned to its CPU.
    public func populate(on cpus: [Int]) throws {
        let t0 = Clock.now()
        let n = max(1, cpus.count)
        let per = (size / UInt64(n) + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        var failures = [Int32](repeating: 0, count: n)
        try failures.withUnsafeMutableBufferPointer { fail in
            let results = fail.baseAddress!
            var threads: [PinnedThread] = []
            for i in 0..<n {
                let start = UInt64(i) * per
                guard start < size else { break }
                let len = min(per, size - start)
                let p = base + Int(start)
                let hugetlb = self.hugetlb
                let cpu = cpus.isEmpty ? nil : cpus[i]
                threads.append(
                    try PinnedThread(cpu: cpu) {
                        var r = madvise(p, Int(len), GuestMemory.MADV_POPULATE_WRITE)
                        if r != 0 && errno == EINVAL && !hugetlb {
                            // A kernel before 5.14: touch each page.
                            var off = 0
                            while off < Int(len) { p.storeBytes(of: 0, toByteOffset: off, as: UInt8.self); off += 4096 }
                            r = 0
                        }
                        results[i] = r == 0 ? 0 : errno
                    })
            }
            for t in threads { t.join() }
        }
        populateSeconds = Clock.now() - t0
        if let e = failures.first(where: { $0 != 0 }) {
            throw VMMError.memory(
                "cannot preallocate \(size >> 20) MiB of guest memory: \(String(cString: strerror(e)))\(hugetlb ? " (too few hugepages reserved?)" : "")"
            )
        }
    }

    /// `count` bytes at guest physical `gpa`, or an error when any of them lies outside guest RAM.
    public func slice(_ gpa: UInt64, _ count: Int) throws -> UnsafeMutableRawBufferPointer {
        guard count >= 0, gpa <= size, UInt64(count) <= size - gpa else {
            throw VMMError.outsideGuestMemory(gpa: gpa, count: count, size: size)
        }
        return UnsafeMutableRawBufferPointer(start: base + Int(gpa), count: count)
    }

    public func write(_ bytes: [UInt8], at gpa: UInt64) throws {
        let s = try slice(gpa, bytes.count)
        bytes.withUnsafeBytes { s.copyMemory(from: $0) }
    }

    public func write<T: FixedWidthInteger>(_ v: T, at gpa: UInt64) throws {
        let s = try slice(gpa, MemoryLayout<T>.size)
        s.storeBytes(of: v.littleEndian, as: T.self)
    }

}

/// Monotonic seconds.
public enum Clock {
    public static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}
