// This node's VM jobs: the prolog's prepare (image into the cache, guests placed on the job's cores,
// booted, every agent ready), tasks started in the guests, the epilog's teardown, and reconciliation
// after a restart. Per-job problems never throw out of prepare: they are recorded in the job's state
// and reported to the job's tasks, because a failing prolog would drain the node.

import Catalog
import Foundation
import Network
import Runner
import Support
import Telemetry
#if canImport(Glibc)
import Glibc
#endif

public struct NodeConfig: Sendable {
    public var name: String
    public var stateDir: String
    public var runDir: String
    public var cacheDir: String
    /// host:port of the catalog role's blob service.
    public var catalogAddress: String
    public var bootTimeout: TimeInterval = 120
    public var qemu: String? = nil
    public var accelerator: Accelerator? = nil
    /// The jobs' private networks ([network] in slurm-vmd.toml); nil: guests have no network but lo.
    public var network: NetworkConfig? = NetworkConfig()
    /// Which backend boots the jobs' guests: as `vm run --backend auto` (the embedded VMM where KVM has
    /// vmx/svm, QEMU otherwise), unless slurm-vmd.toml's node.backend forces one.
    public var backend: BackendChoice = .auto
    /// Guest memory on 2 MiB hugepages: "auto" (when the pool has room), "on", "off".
    public var hugepages: HugepagePolicy = .auto
    /// Most bytes the image cache may hold (nil: no limit).
    public var cacheQuota: Int64? = nil
    /// HOST:PORT of the push listener (`slurm-vm image push`); nil: no listener.
    public var pushListen: String? = nil
    /// Put each job's guests in a cgroup of its own (JobCgroup) where the host supports it.
    public var cgroups = true
    /// Memory a job's cgroup allows each guest beyond its RAM: its VMM (QEMU under TCG holds about
    /// 130 MiB of code and translation cache; the embedded VMM about 4 MiB) and its file server.
    public var guestOverheadMB = 256
    /// Largest console log of a job's guest (nil: 16 MiB).
    public var consoleLimit: UInt64? = nil
    /// The VMMs' uid range ("FIRST-LAST" or "off"); nil: SLURM_VM_VMM_UIDS, else the default.
    public var vmmUIDs: String? = nil

    public init(name: String, stateDir: String, runDir: String, cacheDir: String, catalogAddress: String) {
        self.name = name; self.stateDir = stateDir; self.runDir = runDir; self.cacheDir = cacheDir; self.catalogAddress = catalogAddress
    }
}

public final class NodeManager: @unchecked Sendable {
    public let config: NodeConfig
    let store: JobStore
    let records: GuestRecords
    let cache: ImageCache
    let hv: any Hypervisor
    let accelerator: Accelerator
    /// What backend and accelerator were chosen, and why (logged at start).
    public let acceleratorReport: String
    /// Why jobs' guests get no cgroup here, when they do not (logged at start).
    public let cgroupReport: String?
    let log: @Sendable (String) -> Void

    /// Guests of jobs this process booted or adopted, with their agent channels.
    final class LiveJob: @unchecked Sendable {
        var state: JobState
        var guests: [RunningGuest] = []
        var agents: [AgentConnection] = []
        init(_ s: JobState) { state = s }
    }
    let lock = NSLock()
    var live: [UInt32: LiveJob] = [:]
    /// Jobs being prepared or torn down right now (one operation per job at a time).
    var busy: Set<UInt32> = []
    let busyCond = NSCondition()

    public init(_ c: NodeConfig, log: @escaping @Sendable (String) -> Void) throws {
        config = c
        // The backends read the range where `vm run` gets it too: the environment.
        if let u = c.vmmUIDs { setenv("SLURM_VM_VMM_UIDS", u, 1) }
        store = try JobStore(stateDir: c.stateDir)
        records = try GuestRecords(root: c.runDir)
        let jobs = store
        cache = try ImageCache(
            root: c.cacheDir, source: c.catalogAddress, quota: c.cacheQuota,
            inUse: { Set(jobs.all().map(\.image)) })
        Telemetry.cacheBytes.set(to: Double(cache.totalBytes()))
        var chosen = ""
        (hv, accelerator) = try c.backend.make(forced: c.accelerator, qemuBinary: c.qemu, records: records) {
            chosen += (chosen.isEmpty ? "" : "; ") + "\($0)"
        }
        acceleratorReport = chosen
        cgroupReport =
            !c.cgroups
            ? "job cgroups are off (node.cgroups = false)" : getuid() != 0 ? "not root: no job cgroups" : JobCgroup.unsupported()
        self.log = log
    }

    /// Brings an image into this node's cache by the broadcast `transfer` shared with `nodes` nodes in
    /// all (an admin's `image push`); returns whether the node held it already.
    public func push(
        digest: String, label: String?, transfer: String, nodes: Int,
        progress: @escaping @Sendable (Int64, Int64) -> Void
    ) throws -> Bool {
        try !cache.obtain(
            image: digest, label: label, job: ImageCache.JobKey(job: transfer, nodes: nodes, node: config.name),
            progress: progress
        ).received
    }

    func exclusive<T>(_ job: UInt32, _ body: () throws -> T) rethrows -> T {
        busyCond.lock()
        while busy.contains(job) { busyCond.wait() }
        busy.insert(job)
        busyCond.unlock()
        defer { busyCond.lock(); busy.remove(job); busyCond.broadcast(); busyCond.unlock() }
        return try body()
    }

    // MARK: prolog

    /// Boots this node's share of the job's guests. Returns the job's state: ready, or failed with
    /// the reason (never throws: the prolog must succeed whatever happens to one job).
    public func prepare(_ r: PrepareRequest) -> JobState {
        exclusive(r.job) {
            if let existing = lock.withLock({ live[r.job] }), existing.state.phase == .ready { return existing.state }
            let started = Date()
            var state = JobState(
                job: r.job, uid: r.uid, gid: r.gid, node: config.name, phase: .preparing, error: nil,
                image: r.request.image, imageLabel: r.request.imageLabel, placement: nil, guests: [],
                workdir: r.workdir, created: started, prepareSeconds: nil)
            try? store.save(state)
            let job = LiveJob(state)
            do {
                try boot(r, into: job, state: &state)
                state.phase = .ready
                state.prepareSeconds = Date().timeIntervalSince(started)
                Telemetry.prologSeconds.record(.milliseconds(Int(state.prepareSeconds! * 1000)))
                log(
                    "job \(r.job): \(state.guests.count) guest(s) of \(r.request.imageLabel) ready in \(String(format: "%.2f", state.prepareSeconds!)) s"
                )
            } catch {
                for a in job.agents { a.close() }
                for g in job.guests { g.destroy() }
                job.guests = []; job.agents = []
                state.phase = .failed
                state.error = "\(error)"
                Telemetry.failed(.prepare)
                log("job \(r.job): cannot prepare guests: \(error)")
            }
            job.state = state
            try? store.save(state)
            lock.withLock { live[r.job] = job }
            countRunning()
            return state
        }
    }

    func boot(_ r: PrepareRequest, into job: LiveJob, state: inout JobState) throws {
        // Every node of the job is in its prolog now: they join one broadcast of what they lack.
        let key = ImageCache.JobKey(job: String(r.job), nodes: r.nodeCount, node: r.node)
        let rec = try cache.ensure(image: r.request.image, label: r.request.imageLabel, job: key)
        // vCPUs and memory were decided at submission (Catalog's Sizing and AcceptedRequest); the node
        // places them on the cores Slurm gave the job here. Without --vm-count each node runs one
        // guest: how many nodes the job got is Slurm's decision, known only now.
        let accepted = r.request
        let share = try Placement.share(count: accepted.request.count, nodes: r.nodeCount, index: r.nodeIndex)
        let jobCPUs: [Int]
        do { jobCPUs = try CPUList(parsing: r.cpus).cpus } catch {
            throw NodeError.placement("Slurm's CPU list '\(r.cpus)' for node \(r.node): \(error)")
        }
        let placement = try Placement.place(
            share: share, sizing: accepted.sizing, jobCPUs: jobCPUs, node: r.node,
            allowed: CPUList.callerAffinity())
        state.placement = placement
        state.backend = hv.name == "qemu" ? "qemu/\(accelerator.rawValue)" : hv.name
        state.memoryMB = accepted.memoryMB
        state.cpus = Array(Set(placement.plan.perGuest.flatMap { $0 } + placement.plan.housekeeping)).sorted()
        let image = try BootImage(rec, blobs: cache.blobs)
        let huge = try config.hugepages.use(forMB: accepted.memoryMB * share.guests)
        // The job's working directory, read-write at the same path in every guest.
        var shares: [String] = []
        if let w = r.workdir, w != "/" {
            if GuestSpec.isShareablePath(w), Files.isDirectory(w) {
                shares = [w]
            } else {
                log(
                    "job \(r.job): working directory '\(w)' cannot be shared into the guests (missing, or blanks, ',' or ':' in its path); tasks start in /tmp"
                )
            }
        }
        let names = (share.firstIndex..<(share.firstIndex + share.guests)).map { k in
            (id: "job\(r.job)-vm\(k)", hostname: JobNetworkPlan.hostname(job: r.job, guest: k))
        }
        var set = ImageGuests(
            image: image, names: names, vcpus: placement.vcpus, memoryMB: accepted.memoryMB,
            plan: placement.plan,
            hugepages: huge, shares: shares, keep: true, owner: r.uid, group: r.gid)
        state.guests = names.map(\.id)
        set.consoleLimit = config.consoleLimit
        // The job's cgroup, before anything of the job runs: its VMMs and file servers start in it.
        if let cg = cgroup(of: r.job) {
            try cg.create(
                cpus: placement.plan.perGuest.flatMap { $0 } + placement.plan.housekeeping,
                memoryBytes: UInt64(share.guests) * UInt64(accepted.memoryMB + config.guestOverheadMB) << 20, guests: share.guests)
            set.cgroups = cg.directories
        }
        // The job's private network: this node's taps on the job's bridge, tunnelled to its other nodes.
        let network = try config.network.map { net in
            try JobNetworkPlan.make(
                job: r.job, config: net, nodes: try Self.resolve(r.nodeAddresses ?? [], nodes: r.nodeCount), index: r.nodeIndex,
                first: share.firstIndex, count: share.guests, total: accepted.request.count ?? r.nodeCount)
        }
        state.networkGuests = network?.hosts.count
        try store.save(state)  // before anything is made: a crash from here on leaves a record of it
        if let plan = network {
            try LinkDriver().attach(plan)
            set.networks = plan.guests.map {
                GuestNetwork(
                    network: r.job, tap: $0.tap, mac: $0.mac, mtu: plan.guestMTU, address: "\($0.address)/\(plan.subnet.prefix)",
                    hosts: plan.hostsFile, gateway: plan.nat?.gateway)
            }
        }
        let ready: [ReadyGuest]
        let booting = Date()
        do {
            ready = try set.boot(on: hv, accelerator: accelerator, records: records, bootTimeout: config.bootTimeout)
            Telemetry.bootSeconds.record(.milliseconds(Int(Date().timeIntervalSince(booting) * 1000)))
        } catch {
            if network != nil { LinkDriver().detach(job: r.job, taps: state.networkTaps) }
            throw error
        }
        job.guests = ready.map { $0.guest }
        job.agents = ready.map { $0.agent }
    }

    /// The job's node addresses as IPv4 (names resolved); one per node of the job.
    static func resolve(_ addresses: [String], nodes: Int) throws -> [String] {
        guard addresses.count == nodes else {
            throw NetworkError.config("the prolog gave \(addresses.count) node addresses for the job's \(nodes) nodes; update the SPANK plugin")
        }
        return try addresses.map { a in
            if IPv4Subnet.address(a) != nil { return a }
            var hints = addrinfo()
            hints.ai_family = AF_INET
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(a, nil, &hints, &res) == 0, let r = res else {
                throw NetworkError.config("cannot resolve node address '\(a)' to IPv4 for the job's network")
            }
            defer { freeaddrinfo(res) }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard getnameinfo(r.pointee.ai_addr, r.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else {
                throw NetworkError.config("cannot resolve node address '\(a)' to IPv4 for the job's network")
            }
            return String(cString: host)
        }
    }

    // MARK: epilog

    /// Destroys the job's guests and forgets the job. Also cleans up what a crashed daemon left.
    @discardableResult
    public func teardown(job id: UInt32) -> Int {
        exclusive(id) {
            let job = lock.withLock { live.removeValue(forKey: id) }
            var ids = Set(job?.state.guests ?? [])
            ids.formUnion(store.load(id)?.guests ?? [])
            for a in job?.agents ?? [] { a.close() }
            var n = 0
            for g in job?.guests ?? [] { g.destroy(); ids.remove(g.spec.id); n += 1 }
            for gid in ids { if destroyRecorded(gid) { n += 1 } }
            if let s = job?.state ?? store.load(id), s.networkGuests != nil { LinkDriver().detach(job: id, taps: s.networkTaps) }
            cgroup(of: id)?.remove()
            store.remove(id)
            countRunning()
            if job != nil || n > 0 { log("job \(id): \(n) guest(s) torn down") }
            return n
        }
    }

    /// The running-guests and running-jobs gauges, from the jobs held now.
    func countRunning() {
        let (jobs, guests) = lock.withLock { (live.values.filter { !$0.guests.isEmpty }.count, live.values.reduce(0) { $0 + $1.guests.count }) }
        Telemetry.jobsRunning.set(to: Double(jobs))
        Telemetry.guestsRunning.set(to: Double(guests))
    }

    /// Ends a guest known only from its record (adopted, or left by a daemon that died).
    func destroyRecorded(_ id: String) -> Bool {
        guard let r = records.load(id) else { Files.remove(records.dir(id)); return false }
        if r.alive {
            BackendChoice.adopt(r).destroy()
            return true
        }
        Files.remove(records.dir(id))
        return false
    }

    // MARK: tasks

    public func state(of job: UInt32) -> JobState? {
        lock.withLock { live[job]?.state } ?? store.load(job)
    }

    public func jobs() -> [JobState] { store.all() }

    /// Starts a task of `job` in one of its guests. `caller` is the connecting process's uid: only
    /// the job's owner (or root) may run in its guests. Once the task has started, `stdin` belongs to
    /// it (closed when its input ends) and so does `pmi`, the task's PMI channel (slurmstepd's PMI_FD),
    /// carried to the command as its own PMI_FD; the caller keeps both if this throws. The command runs
    /// as the job's owner, or as root with `asRoot` (the API lets only root ask for it).
    public func startTask(
        job id: UInt32, caller: UInt32, localID: Int, exec: ExecRequest, asRoot: Bool = false, stdin: Int32?, pmi: Int32? = nil,
        stdout: @escaping @Sendable ([UInt8]) -> Void, stderr: @escaping @Sendable ([UInt8]) -> Void
    )
        throws -> (command: AgentConnection.Command, guest: String)
    {
        // Whose job it is comes first: nothing about another user's job is told.
        if let owner = lock.withLock({ live[id]?.state.uid }) ?? store.load(id)?.uid, caller != 0, caller != owner {
            throw NodeError.notOwner(job: id, owner: owner, caller: caller)
        }
        guard let job = lock.withLock({ live[id] }) else {
            if let s = store.load(id) {
                throw NodeError.noGuests(
                    s.error.map { "job \(id)'s guests on \(config.name) could not be prepared: \($0)" }
                        ?? "job \(id)'s guests on \(config.name) are not available (state \(s.phase.rawValue))")
            }
            throw NodeError.noGuests(
                "job \(id) has no guests on node \(config.name): it was not submitted with --vm-* options, or its prolog did not run (PrologFlags=Alloc)"
            )
        }
        guard caller == 0 || caller == job.state.uid else {
            throw NodeError.notOwner(job: id, owner: job.state.uid, caller: caller)
        }
        guard !asRoot || caller == 0 else { throw NodeError.notOwner(job: id, owner: 0, caller: caller) }
        if job.state.phase == .failed {
            throw NodeError.noGuests("job \(id)'s guests on \(config.name) could not be prepared: \(job.state.error ?? "unknown error")")
        }
        if let why = lostGuest(job: id) { throw NodeError.noGuests(why) }
        guard job.state.phase == .ready, !job.agents.isEmpty else {
            throw NodeError.noGuests("job \(id)'s guests on \(config.name) are not ready (\(job.state.phase.rawValue))")
        }
        let i = Placement.guest(forLocalTask: localID, guests: job.agents.count)
        var req = exec
        req.uid = asRoot ? 0 : job.state.uid
        req.gid = asRoot ? 0 : job.state.gid
        req.env.append("SLURM_VM_GUEST=\(job.guests[i].spec.hostname)")
        // For users who start MPI themselves: every guest of the job, as /etc/slurm-vm/hostfile has them.
        if job.state.networkGuests != nil {
            req.env.append("SLURM_VM_HOSTS=" + job.state.networkHosts.joined(separator: ","))
            // UCX (MPICH's network layer in Debian) would also try TCP over each guest's loopback,
            // which names a different host in every guest; the job network is eth0. The user's own
            // setting wins.
            if !req.env.contains(where: { $0.hasPrefix("UCX_NET_DEVICES=") }) { req.env.append("UCX_NET_DEVICES=eth0") }
        }
        if pmi != nil { req.relayVariable = "PMI_FD" }
        let cmd = try job.agents[i].start(req, stdin: stdin, ownsStdin: true, relay: pmi, stdout: stdout, stderr: stderr)
        return (cmd, job.guests[i].spec.id)
    }

    /// The job's cgroup on this node; nil where jobs get none (cgroupReport says why).
    func cgroup(of job: UInt32) -> JobCgroup? {
        cgroupReport == nil ? JobCgroup(node: config.name, job: job) : nil
    }

    /// When one of the job's guests has ended on its own (its VMM killed or crashed, its kernel
    /// panicked, it powered off), the job is marked lost and the reason returned: what a task that was
    /// running in it, and every later task, reports. nil while all of them run. `waitingFor`: the guest
    /// whose agent channel just broke, given a moment to be seen ended (its VMM is reaped a little
    /// after its sockets close).
    public func lostGuest(job id: UInt32, waitingFor suspect: String? = nil) -> String? {
        guard let job = lock.withLock({ live[id] }) else { return nil }
        if job.state.phase == .lost { return job.state.error }
        guard job.state.phase == .ready else { return nil }
        for g in job.guests {
            guard let end = g.waitForEnd(timeout: g.spec.id == suspect ? 1 : 0) else { continue }
            var how = "\(end)"
            // The panic line comes before the kernel's call trace, which alone can run past 40 lines (a
            // CI run had 43 after it and reported the panic as a plain reset): the whole tail is searched.
            if let panic = Console.tail(g.spec.consolePath, lines: 2000).split(separator: "\n").last(where: { $0.contains("Kernel panic") }) {
                // The console line without its "  | " prefix and the kernel's "[   1.014105] " time stamp.
                var line = Substring(panic.replacingOccurrences(of: "  | ", with: "")).drop { $0 == " " }
                if line.first == "[", let close = line.firstIndex(of: "]") { line = line[line.index(after: close)...].drop { $0 == " " } }
                how = "its kernel panicked (\(line))"
            } else if let kills = cgroup(of: id)?.oomKills, kills > 0 {
                how += ", killed by the kernel's OOM killer: the job's memory limit (its guests' RAM plus node.guest_overhead per guest) was reached"
            }
            let why =
                "guest \(g.spec.hostname) of job \(id) on \(config.name) ended: \(how). The job's guests on \(config.name) are gone; its later steps there fail (console: \(g.spec.consolePath) until the epilog)"
            lock.withLock {
                job.state.phase = .lost
                job.state.error = why
            }
            try? store.save(job.state)
            Telemetry.failed(.guestLost)
            log("job \(id): \(why)")
            return why
        }
        return nil
    }

    // MARK: restart

    /// After a restart: guests of running jobs are adopted (their agents reconnected), guests of ended
    /// jobs are destroyed, guests no job claims are destroyed. `running` answers whether Slurm still
    /// runs a job (nil: cannot tell — keep it).
    public func reconcile(running: (UInt32) -> Bool?) {
        var claimed = Set<String>()
        for s in store.all() {
            let alive = running(s.job)
            if alive == false {
                log("job \(s.job) has ended: removing what is left of it")
                teardown(job: s.job)
                continue
            }
            claimed.formUnion(s.guests)
            if s.phase == .preparing {
                var f = s
                f.phase = .failed
                f.error = "slurm-vmd restarted while the guests were being prepared"
                for g in s.guests { _ = destroyRecorded(g) }
                try? store.save(f)
                lock.withLock { live[s.job] = LiveJob(f) }
                continue
            }
            if s.phase == .failed { lock.withLock { live[s.job] = LiveJob(s) }; continue }
            let job = LiveJob(s)
            do {
                for gid in s.guests {
                    guard let r = records.load(gid), r.alive else { throw NodeError.noGuests("guest \(gid) is gone") }
                    let g = BackendChoice.adopt(r)
                    job.guests.append(g)
                    let a = try g.connectAgent()
                    job.agents.append(a)
                    _ = try a.handshake(timeout: 10)
                }
                log("job \(s.job): adopted \(job.guests.count) running guest(s)")
            } catch {
                for a in job.agents { a.close() }
                for g in s.guests { _ = destroyRecorded(g) }
                job.guests = []; job.agents = []
                job.state.phase = .failed
                job.state.error = "the job's guests were lost while slurm-vmd restarted: \(error)"
                try? store.save(job.state)
                log("job \(s.job): \(job.state.error!)")
            }
            lock.withLock { live[s.job] = job }
        }
        for r in records.live() where !claimed.contains(r.spec.id) {
            log("guest \(r.spec.id) belongs to no job: destroying it")
            _ = destroyRecorded(r.spec.id)
        }
        let known = Set(store.all().map(\.job))
        for j in cgroupReport == nil ? JobCgroup.jobs(node: config.name) : [] where !known.contains(j) {
            log("job \(j)'s cgroup is left from before: removing it")
            cgroup(of: j)?.remove()
        }
    }

    /// Stops every guest this process holds (daemon shutdown with `--stop-guests`); normally guests
    /// outlive a daemon restart and are adopted.
    public func closeAgents() {
        for j in lock.withLock({ Array(live.values) }) { for a in j.agents { a.close() } }
    }
}
