// The host end of the agent's virtio-console port: a Unix socket the runner connects to, served by one
// I/O thread on the housekeeping CPU (never on a guest's core). One connection at a time, as QEMU's
// socket character device does: the next waits in the backlog. Its opening and closing reach the guest
// as PORT_OPEN. The thread sleeps in poll(2) and wakes for the socket or when a vCPU leaves output.

import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class HostChannel: @unchecked Sendable {
    public let path: String
    let listener: Int32
    let wakeRead: Int32, wakeWrite: Int32
    let bus: PortBus
    var console: VirtioConsole?
    var thread: PinnedThread?
    let stopping = Atomic<Bool>(false)
    var connection: Int32 = -1
    var pending: [UInt8] = []
    var pendingStart = 0
    /// The host closed while the guest had no room: what it sent before closing still waits in the
    /// socket, so the connection stays until the guest has drained it.
    var peerClosed = false

    /// Listens on `path` (replacing a stale socket there).
    public init(path: String, bus: PortBus) throws {
        guard let addr = HostFDs.unixAddress(path) else {
            throw VMMError.device("the agent socket path must be 1 to \(HostFDs.maxPath) bytes: \(path)")
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw VMMError.device("cannot create the agent socket: \(String(cString: strerror(errno)))") }
        unlink(path)
        let r = HostFDs.with(addr) { bind(s, $0, $1) }
        guard r == 0, listen(s, 4) == 0 else {
            let e = errno
            close(s)
            throw VMMError.device("cannot listen on the agent socket \(path): \(String(cString: strerror(e)))")
        }
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0 else { close(s); throw VMMError.device("cannot create a pipe: \(String(cString: strerror(errno)))") }
        for f in p { Self.nonblockingCloexec(f) }
        listener = s; wakeRead = p[0]; wakeWrite = p[1]
        self.path = path
        self.bus = bus
    }

    deinit {
        stop()
        close(listener); close(wakeRead); close(wakeWrite)
        if connection >= 0 { close(connection) }
        unlink(path)
    }

    /// Wakes the I/O thread (from any thread; never blocks).
    public func wake() {
        var b: UInt8 = 1
        _ = write(wakeWrite, &b, 1)
    }

    public func start(console: VirtioConsole, cpu: Int?) throws {
        self.console = console
        thread = try PinnedThread(cpu: cpu) { [self] in loop() }
    }

    public func stop() {
        guard let t = thread else { return }
        stopping.store(true, ordering: .releasing)
        wake()
        t.join()
        thread = nil
    }

    /// Runs a device operation under the bus lock; a ring the guest broke stops the device.
    func device(_ body: (VirtioConsole) throws -> Void) {
        guard let c = console else { return }
        bus.exclusive {
            do { try body(c) } catch { c.transport.broke("\(error)") }
        }
    }

    func loop() {
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while !stopping.load(ordering: .acquiring) {
            if pendingStart == pending.count {
                pending = []; pendingStart = 0
                device { pending = try $0.takeOutbound() }
            }
            var room = 0
            device { room = $0.inboundRoom }
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            if connection < 0 {
                fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            } else if peerClosed && room == 0 {
                // POLLHUP would be reported at once and forever: wait for the guest's wake instead.
            } else {
                var ev: Int16 = 0
                if room > 0 { ev |= Int16(POLLIN) }
                if pendingStart < pending.count { ev |= Int16(POLLOUT) }
                fds.append(pollfd(fd: connection, events: ev, revents: 0))
            }
            let r = poll(&fds, nfds_t(fds.count), -1)
            if r < 0 { if errno == EINTR { continue }; break }
            if fds[0].revents != 0 { while read(wakeRead, &buf, buf.count) > 0 {} }
            if fds.count < 2 { continue }
            if connection < 0 {
                guard fds[1].revents & Int16(POLLIN) != 0 else { continue }
                let c = accept(listener, nil, nil)
                guard c >= 0 else { continue }
                Self.nonblockingCloexec(c)
                connection = c
                device { try $0.hostConnected(true) }
                continue
            }
            let ev = fds[1].revents
            if ev & Int16(POLLIN | POLLHUP | POLLERR) != 0 && room > 0 {
                // Read under the bus lock, against the room there is now: a guest that reset the device
                // or closed its port since the poll began has none, and its bytes stay in the socket.
                var n = 0, err: Int32 = 0
                device { c in
                    let now = c.inboundRoom
                    guard now > 0 else { n = -1; err = EAGAIN; return }
                    n = read(connection, &buf, min(buf.count, now)); err = errno
                    if n > 0 { _ = try buf.withUnsafeBytes { try c.deliver(UnsafeRawBufferPointer(rebasing: $0[0..<n])) } }
                }
                if n == 0 || (n < 0 && err != EAGAIN && err != EINTR) {
                    hangUp()
                    continue
                }
            } else if ev & Int16(POLLERR) != 0 {  // (with room > 0 the read above met these)
                hangUp()
                continue
            } else if ev & Int16(POLLHUP) != 0 {
                peerClosed = true  // read the rest once the guest makes room; then EOF hangs up
                continue
            }
            if ev & Int16(POLLOUT) != 0 && pendingStart < pending.count {
                // send(MSG_NOSIGNAL): a runner that went away is a hang-up, not a SIGPIPE that ends the VMM.
                let n = pending.withUnsafeBytes {
                    send(connection, $0.baseAddress! + pendingStart, pending.count - pendingStart, Int32(MSG_NOSIGNAL))
                }
                if n > 0 { pendingStart += n } else if n < 0 && errno != EAGAIN && errno != EINTR { hangUp() }
            }
        }
    }

    static func nonblockingCloexec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    func hangUp() {
        close(connection)
        connection = -1
        peerClosed = false
        pending = []; pendingStart = 0
        device { try $0.hostConnected(false) }
    }
}
