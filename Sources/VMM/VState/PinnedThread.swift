// A POSIX thread, optionally pinned to one host CPU before its body runs. The VMM avoids Foundation
// (its RSS budget is a few MiB), so threads are pthreads.

import CLinux
#if canImport(Glibc)
import Glibc
#endif

public final class PinnedThread: @unchecked Sendable {
    final class Box {
        let body: () -> Void; let cpu: Int?
        init(_ b: @escaping () -> Void, _ c: Int?) { body = b; cpu = c }
    }
    private var thread = pthread_t()
    private let box: Box
    private var joined = false

    /// Starts `body` on a new thread pinned to `cpu` (nil: the creator's affinity). The pin is best
    /// effort (it only places first-touch memory); vCPU threads pin themselves and fail loudly.
    public init(cpu: Int?, stackSize: Int = 256 << 10, _ body: @escaping () -> Void) throws {
        box = Box(body, cpu)
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, stackSize)
        let arg = Unmanaged.passRetained(box).toOpaque()
        let r = pthread_create(
            &thread, &attr,
            { p in
                let b = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
                if let c = b.cpu {
                    var cpu = Int32(c)
                    _ = clinux_set_affinity(0, &cpu, 1)
                }
                b.body()
                return nil
            }, arg)
        guard r == 0 else {
            Unmanaged<Box>.fromOpaque(arg).release()
            throw VMMError.host("cannot start a thread: \(String(cString: strerror(r)))")
        }
    }

    public var pthread: pthread_t { thread }

    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }
}
