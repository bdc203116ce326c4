// slurm-vmd: the catalog role (matching at submission, image blobs for the nodes) and the node role
// (guests for the jobs on this node), as configured in one TOML file. Runs until SIGTERM/SIGINT;
// guests outlive a restart of the daemon and are adopted (or removed, if their job ended) at start.

import ArgumentParser
import Daemon
import Foundation
import Logging
import ServiceLifecycle
import Support
#if canImport(Glibc)
import Glibc
#endif

@main
struct SlurmVMD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slurm-vmd",
        abstract: "The slurm-vm daemon: matching and image service (catalog role), guests for jobs (node role).")

    @Option(help: "Configuration file.") var config: String = DaemonConfig.defaultPath
    @Flag(help: "Check the configuration and exit.") var check = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let cfg: DaemonConfig
        do { cfg = try DaemonConfig.load(config) } catch {
            FileHandle.standardError.write(Data("slurm-vmd: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if check { print("\(config): OK"); return }
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level \(logLevel)") }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: "slurm-vmd")
        logger.logLevel = level
        let api: API
        do { api = try API(config: cfg, logger: logger) } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        if let node = api.node {
            node.reconcile(running: SlurmQuery.isRunning)
        }
        var services: [Service] = [ListenerService.control(api: api, path: cfg.socket, logger: logger)]
        if let c = cfg.catalog { services.append(ListenerService.blobs(api: api, listen: c.listen, logger: logger)) }
        if let node = api.node { services.append(JobReaper(node: node, logger: logger)) }
        if let l = api.node?.config.pushListen { services.append(ListenerService.push(api: api, listen: l, logger: logger)) }
        if let m = cfg.metrics { services.append(MetricsService(listen: m, logger: logger)) }
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        api.node?.closeAgents()
    }
}

/// Asks Slurm whether a job still runs (for reconciliation after a restart).
enum SlurmQuery {
    static func isRunning(_ job: UInt32) -> Bool? {
        guard let r = try? Subprocess.run(["scontrol", "-o", "show", "job", String(job)]) else { return nil }
        let o = r.text, e = r.error
        if e.contains("Invalid job id") { return false }
        guard r.status == 0, let at = o.range(of: "JobState=") else { return nil }
        let state = o[at.upperBound...].prefix { $0 != " " }
        // COMPLETING counts as ended: the epilog runs then, and if it could not reach us (we were
        // restarting) nothing else would ever tear the guests down.
        return ["RUNNING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"].contains(String(state))
    }
}
