// A QMP (QEMU Machine Protocol) client: JSON objects over a Unix socket. A reader thread separates
// command replies (returned to the caller, in order) from asynchronous events (kept for the caller).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class QMPClient: @unchecked Sendable {
    let fd: Int32
    let cond = NSCondition()
    var replies: [[String: Any]] = []
    public private(set) var events: [[String: Any]] = []
    var closed = false
    let writeLock = NSLock()

    public init(path: String, timeout: TimeInterval, alive: () -> Bool) throws {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var fd: Int32 = -1
        while true {
            if let s = try? UnixSocket.connect(path) { fd = s; break }
            if !alive() { throw RunnerError.qmp("QEMU exited before its monitor came up") }
            if Date() > deadline { throw RunnerError.qmp("QEMU's monitor socket \(path) did not appear within \(Int(timeout)) s") }
            usleep(5_000)
        }
        self.fd = fd
        let t = Thread { [unowned self] in self.readLoop() }
        t.name = "qmp-reader"
        t.start()
        _ = try waitReply(timeout: timeout)  // the greeting
        _ = try execute("qmp_capabilities")
    }

    deinit { Glibc.close(fd) }

    public func close() {
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    /// Runs a command; returns its "return" value or throws its "error".
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil, timeout: TimeInterval = 10) throws -> Any? {
        var obj: [String: Any] = ["execute": command]
        if let arguments { obj["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: obj)
        data.append(UInt8(ascii: "\n"))
        writeLock.lock()
        let ok = data.withUnsafeBytes { b -> Bool in
            var off = 0
            while off < b.count {
                let n = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        writeLock.unlock()
        guard ok else { throw RunnerError.qmp("cannot send \(command) to QEMU (it has exited?)") }
        let r = try waitReply(timeout: timeout)
        if let e = r["error"] as? [String: Any] {
            throw RunnerError.qmp("QEMU refused \(command): \(e["desc"] as? String ?? "\(e)")")
        }
        return r["return"]
    }

    func waitReply(timeout: TimeInterval) throws -> [String: Any] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        cond.lock(); defer { cond.unlock() }
        while replies.isEmpty {
            if closed { throw RunnerError.qmp("QEMU closed its monitor") }
            if !cond.wait(until: deadline) { throw RunnerError.qmp("QEMU did not answer within \(Int(timeout)) s") }
        }
        return replies.removeFirst()
    }

    /// The events received so far with this name (e.g. SHUTDOWN).
    public func events(named name: String) -> [[String: Any]] {
        cond.lock(); defer { cond.unlock() }
        return events.filter { $0["event"] as? String == name }
    }

    func readLoop() {
        var pending = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            pending += buf[0..<n]
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<nl])
                pending.removeFirst(nl + 1)
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
                cond.lock()
                if obj["event"] != nil { events.append(obj) } else { replies.append(obj) }
                cond.broadcast()
                cond.unlock()
            }
        }
        cond.lock(); closed = true; cond.broadcast(); cond.unlock()
    }
}
