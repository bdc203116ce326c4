// `slurm-vm image push`: an admin sends an image to nodes ahead of the jobs that will use it. The CLI
// dials every node's push listener (node.listen) and hands it an order signed by MUNGE; each node joins
// the same broadcast its prologs would (Node.ImageCache.ensure with a job key of its own, so the
// catalog's coordinator plans one transfer over all of them) and streams its progress back.
//
//   client: "PUSH <MUNGE credential whose payload is a PushOrder in JSON>\n"
//   server: "PROGRESS <bytes> <total>\n" (repeated), then "DONE held|received <seconds>\n" or "ERR <message>\n"

import Foundation
import Node
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct PushOrder: Codable, Sendable {
    /// The image's digest and NAME:VERSION (the record a node fetches).
    public var digest: String
    public var label: String?
    /// Names the broadcast: every node of one push gives the same.
    public var transfer: String
    /// How many nodes the push goes to (the coordinator waits for them all).
    public var nodes: Int
    /// The address the pusher dialled (one credential per node; munged refuses replays).
    public var to: String

    public init(digest: String, label: String?, transfer: String, nodes: Int, to: String) {
        self.digest = digest; self.label = label; self.transfer = transfer; self.nodes = nodes; self.to = to
    }

    func validate() throws {
        guard Digests.isSHA256(digest) else {
            throw DaemonError.malformed("push: '\(digest.prefix(80))' is not sha256:<64 hex digits>")
        }
        guard transfer.hasPrefix("push-"), transfer.count <= 64, transfer.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
            throw DaemonError.malformed("push: transfer name '\(transfer.prefix(80))' must be push-<letters, digits, '-'>")
        }
        guard nodes >= 1, nodes <= 65536 else { throw DaemonError.malformed("push: \(nodes) nodes is out of range (1 to 65536)") }
        if let label { guard label.count <= 256, !label.contains(" "), !label.contains("\n") else { throw DaemonError.malformed("push: bad label") } }
    }
}

public struct PushOutcome: Sendable {
    public var held: Bool
    public var seconds: Double
}

extension API {
    /// Serves one connection to the node role's push listener.
    public func servePush(_ fd: Int32) {
        defer { close(fd) }
        BlobWire.setTimeouts(fd, 30)
        func fail(_ m: String) { _ = BlobWire.writeAll(fd, "ERR \(m.replacingOccurrences(of: "\n", with: "; "))\n") }
        guard let line = BlobWire.readLine(fd) else { return }
        guard line.hasPrefix("PUSH "), let node else { return fail("expected PUSH <MUNGE credential>") }
        let order: PushOrder
        do {
            let cred = try Munge.decode(String(line.dropFirst(5)))
            guard cred.uid == 0 || cred.uid == slurmUID else {
                return fail("only root or SlurmUser may push images to \(node.config.name) (the credential is for uid \(cred.uid))")
            }
            order = try JSONDecoder().decode(PushOrder.self, from: cred.payload)
            try order.validate()
        } catch {
            return fail("\(error)")
        }
        logger.info("push \(order.transfer): \(order.label ?? order.digest) to \(order.nodes) node(s)")
        let latest = Latest()
        let done = DispatchSemaphore(value: 0)
        let result = Latest.Result()
        let t = Thread {
            defer { done.signal() }
            let start = Date()
            do {
                let held = try node.push(
                    digest: order.digest, label: order.label, transfer: order.transfer, nodes: order.nodes,
                    progress: { latest.set($0, $1) })
                result.set(.success(PushOutcome(held: held, seconds: Date().timeIntervalSince(start))))
            } catch {
                result.set(.failure(error))
            }
        }
        t.start()
        // Progress at most four times a second, from this thread: the transfer's event loop never waits
        // on a slow pusher.
        var sent: (Int64, Int64)? = nil
        var pusherGone = false
        while done.wait(timeout: .now() + 0.25) == .timedOut {
            if let p = latest.get(), sent.map({ $0 != p }) ?? true, !pusherGone {
                pusherGone = !BlobWire.writeAll(fd, "PROGRESS \(p.0) \(p.1)\n")  // the push goes on: the others count on us
                sent = p
            }
        }
        switch result.get() {
        case .success(let o)?:
            if let p = latest.get() { _ = BlobWire.writeAll(fd, "PROGRESS \(p.1) \(p.1)\n") }
            _ = BlobWire.writeAll(fd, "DONE \(o.held ? "held" : "received") \(String(format: "%.2f", o.seconds))\n")
            logger.info("push \(order.transfer): \(o.held ? "already held" : "received") in \(String(format: "%.2f", o.seconds)) s")
        case .failure(let e)?:
            logger.warning("push \(order.transfer): \(e)")
            fail("\(e)")
        case nil:
            fail("the push ended without a result")
        }
    }
}

/// The latest value written by one thread and read by another.
final class Latest: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (Int64, Int64)?
    func set(_ a: Int64, _ b: Int64) { lock.withLock { value = (a, b) } }
    func get() -> (Int64, Int64)? { lock.withLock { value } }

    final class Result: @unchecked Sendable {
        private let lock = NSLock()
        private var value: Swift.Result<PushOutcome, Error>?
        func set(_ r: Swift.Result<PushOutcome, Error>) { lock.withLock { value = r } }
        func get() -> Swift.Result<PushOutcome, Error>? { lock.withLock { value } }
    }
}

/// The pusher's side: one connection to one node.
public enum PushClient {
    public enum Event: Sendable {
        case progress(Int64, Int64)
        case done(PushOutcome)
    }

    /// Sends the order to the node at `address` and reports its progress until it is done; throws the
    /// node's error. `timeout` bounds each wait for a line (a node reports at least every few seconds
    /// while it receives, and the broadcast itself gives up after a minute without progress).
    public static func push(_ order: PushOrder, to address: String, timeout: TimeInterval, _ event: (Event) -> Void) throws {
        let fd: Int32
        do { fd = try BlobWire.connect(address, timeout: timeout) } catch {
            throw DaemonError.unreachable(
                "cannot reach slurm-vmd's push listener at \(address): \("\(error)".replacingOccurrences(of: "cannot connect to the catalog at \(address): ", with: "")) (is node.listen set in its slurm-vmd.toml?)"
            )
        }
        defer { close(fd) }
        let cred = try Munge.encode(try JSONEncoder().encode(order))
        guard BlobWire.writeAll(fd, "PUSH \(cred)\n") else {
            throw DaemonError.unreachable("cannot send to \(address): \(String(cString: strerror(errno)))")
        }
        while true {
            guard let line = BlobWire.readLine(fd) else {
                throw DaemonError.unreachable(
                    "\(address) closed the connection (did its slurm-vmd stop? see its log) or sent nothing for \(Int(timeout)) s")
            }
            let f = line.split(separator: " ").map(String.init)
            if f.first == "ERR" { throw DaemonError.refused(String(line.dropFirst(4))) }
            if f.count == 3, f[0] == "PROGRESS", let a = Int64(f[1]), let b = Int64(f[2]) { event(.progress(a, b)); continue }
            if f.count == 3, f[0] == "DONE", let s = Double(f[2]) { event(.done(PushOutcome(held: f[1] == "held", seconds: s))); return }
            throw DaemonError.malformed("\(address) sent '\(line.prefix(80))', not a push reply")
        }
    }
}
