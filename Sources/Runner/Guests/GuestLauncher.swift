// Booting a set of space-shared guests and running commands in them: CPU planning (each vCPU on its own
// CPU from the caller's list, within the caller's affinity), parallel boot, waiting for every agent,
// commands with output streamed (prefixed per guest when there are several), and teardown that always
// runs — on success, on error and on Ctrl-C.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct CPUPlan: Sendable, Equatable, Codable {
    public var perGuest: [[Int]]
    public var housekeeping: [Int]
    public var warnings: [String]
}

public enum CPUPlanner {
    /// `count` guests of `vcpus` vCPUs on `cpus`. Spare CPUs of the list become housekeeping CPUs for
    /// the VMMs' other threads; with none spare, those share the guests' CPUs (and a warning says so).
    public static func plan(count: Int, vcpus: Int, cpus: CPUList, housekeeping: CPUList?, allowed: CPUList) throws -> CPUPlan {
        guard count >= 1 else { throw RunnerError.invalidRequest("--count must be at least 1") }
        guard vcpus >= 1 else { throw RunnerError.invalidRequest("--vcpus must be at least 1") }
        let outside = (cpus.cpus + (housekeeping?.cpus ?? [])).filter { !allowed.cpus.contains($0) }
        if !outside.isEmpty {
            throw RunnerError.invalidRequest(
                "CPUs \(CPUList(outside)) are outside this process's CPU affinity (\(allowed)); give CPUs from \(allowed)")
        }
        let need = count * vcpus
        guard need <= cpus.count else {
            let what = count == 1 ? "\(vcpus) vCPUs" : "\(count) guests × \(vcpus) vCPUs"
            throw RunnerError.invalidRequest(
                "\(what) need \(need) CPUs, but --cpus gives \(cpus.count) (\(cpus)); each vCPU gets a CPU of its own, never shared")
        }
        let per = (0..<count).map { Array(cpus.cpus[($0 * vcpus)..<(($0 + 1) * vcpus)]) }
        var warnings: [String] = []
        var hk: [Int]
        if let housekeeping {
            let clash = housekeeping.cpus.filter { cpus.cpus.prefix(need).contains($0) }
            if !clash.isEmpty { throw RunnerError.invalidRequest("housekeeping CPUs \(CPUList(clash)) are also vCPU CPUs; pick others") }
            hk = housekeeping.cpus
        } else if cpus.count > need {
            hk = Array(cpus.cpus[need...])
        } else {
            hk = Array(cpus.cpus.prefix(need))
            warnings.append(
                "no spare CPU in --cpus for the VMM's housekeeping threads, so they share the guests' CPUs; give one more CPU to keep the guests' CPUs to their vCPUs alone"
            )
        }
        return CPUPlan(perGuest: per, housekeeping: hk, warnings: warnings)
    }
}

/// One booted guest with its agent, ready for commands.
public final class ReadyGuest: @unchecked Sendable {
    public let guest: RunningGuest
    public let agent: AgentConnection
    public let info: GuestInfo
    init(_ g: RunningGuest, _ a: AgentConnection, _ i: GuestInfo) { guest = g; agent = a; info = i }
    public var id: String { guest.spec.id }
}

public enum GuestLauncher {
    /// Boots every spec in parallel and waits for each agent; if any guest fails, all are destroyed
    /// and the first failure is thrown.
    public static func bootAll(
        _ specs: [GuestSpec], on hv: Hypervisor, bootTimeout: TimeInterval,
        onBooted: @escaping @Sendable (RunningGuest) -> Void = { _ in }
    ) throws -> [ReadyGuest] {
        final class Slot: @unchecked Sendable { var ready: ReadyGuest?; var guest: RunningGuest?; var error: Error? }
        let slots = specs.map { _ in Slot() }
        DispatchQueue.concurrentPerform(iterations: specs.count) { i in
            do {
                let g = try hv.boot(specs[i])
                slots[i].guest = g
                onBooted(g)
                slots[i].ready = try waitReady(g, timeout: bootTimeout)
            } catch { slots[i].error = error }
        }
        if let err = slots.compactMap({ $0.error }).first {
            for s in slots { s.ready?.agent.close(); s.guest?.destroy() }
            throw err
        }
        return slots.map { $0.ready! }
    }

    /// Connects to the agent and handshakes; a guest that ends or stays silent fails with its console.
    public static func waitReady(_ g: RunningGuest, timeout: TimeInterval) throws -> ReadyGuest {
        let agent: AgentConnection
        do { agent = try g.connectAgent() } catch {
            // A VMM that already ended closed its socket: say how it ended, not that the socket refused.
            if let end = g.waitForEnd(timeout: 1) {
                throw RunnerError.notReady("guest \(g.spec.id) \(end) before its agent was ready", consoleTail: Console.tail(g.spec.consolePath))
            }
            throw RunnerError.notReady("guest \(g.spec.id): cannot reach its agent channel: \(error)", consoleTail: Console.tail(g.spec.consolePath))
        }
        let deadline = Date(timeIntervalSinceNow: timeout)
        // Handshake in short rounds so a guest that dies (panic, VMM crash) is reported at once.
        while true {
            do {
                let info = try agent.handshake(timeout: min(1, max(0.05, deadline.timeIntervalSinceNow)))
                return ReadyGuest(g, agent, info)
            } catch {
                if let end = g.waitForEnd(timeout: 0) {
                    agent.close()
                    throw RunnerError.notReady("guest \(g.spec.id) \(end) before its agent was ready", consoleTail: Console.tail(g.spec.consolePath))
                }
                if Date() >= deadline {
                    agent.close()
                    throw RunnerError.notReady(
                        "guest \(g.spec.id) did not become ready within \(Int(timeout)) s (its agent never answered)",
                        consoleTail: Console.tail(g.spec.consolePath))
                }
            }
        }
    }

    /// Runs one command in every guest at once. With several guests each output line is prefixed by the
    /// guest's id; stdin goes to the first guest only (as srun sends it to task 0).
    public static func run(
        _ req: ExecRequest, in guests: [ReadyGuest], stdin: Int32?, prefix: Bool,
        out: OutputSink, err: OutputSink
    ) -> [Result<CommandStatus, Error>] {
        final class Box: @unchecked Sendable { var r: Result<CommandStatus, Error> = .failure(AgentError("not run")) }
        let boxes = guests.map { _ in Box() }
        DispatchQueue.concurrentPerform(iterations: guests.count) { i in
            let g = guests[i]
            let tag = prefix ? g.id + ": " : nil
            let o = out.stream(tag: tag), e = err.stream(tag: tag)
            do {
                var r = req
                if !r.env.contains(where: { $0.hasPrefix("SLURM_VM_GUEST=") }) { r.env.append("SLURM_VM_GUEST=\(g.id)") }
                let cmd = try g.agent.start(r, stdin: i == 0 ? stdin : nil, stdout: { o.write($0) }, stderr: { e.write($0) })
                let (status, errors) = try cmd.wait()
                for m in errors { e.write(Array("slurm-vm: \(m)\n".utf8)) }
                boxes[i].r = .success(status)
            } catch { boxes[i].r = .failure(error) }
            o.finish(); e.finish()
        }
        return boxes.map { $0.r }
    }
}

/// A file descriptor shared by several guests' output streams: whole lines, each prefixed, never
/// interleaved mid-line; without a prefix, bytes pass through untouched.
public final class OutputSink: @unchecked Sendable {
    let fd: Int32
    let lock = NSLock()
    public init(fd: Int32) { self.fd = fd }

    func emit(_ b: [UInt8]) {
        lock.lock(); defer { lock.unlock() }
        var off = 0
        while off < b.count {
            let n = b.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, b.count - off) }
            if n < 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }

    public final class Stream: @unchecked Sendable {
        let sink: OutputSink
        let tag: [UInt8]?
        var partial: [UInt8] = []
        init(_ s: OutputSink, _ t: String?) { sink = s; tag = t.map { Array($0.utf8) } }

        public func write(_ b: [UInt8]) {
            guard let tag else { sink.emit(b); return }
            partial += b
            guard let last = partial.lastIndex(of: 10) else { return }
            var out: [UInt8] = []
            for line in partial[...last].split(separator: 10, omittingEmptySubsequences: false).dropLast() {
                out += tag; out += line; out.append(10)
            }
            partial.removeFirst(last + 1)
            sink.emit(out)
        }

        public func finish() {
            if let tag, !partial.isEmpty { sink.emit(tag + partial + [10]); partial = [] }
        }
    }

    public func stream(tag: String?) -> Stream { Stream(self, tag) }
}
