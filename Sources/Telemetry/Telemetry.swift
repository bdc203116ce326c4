// What slurm-vmd counts and measures, for its Prometheus endpoint (docs/operations.md lists each
// metric): one registry per process (swift-prometheus), its metrics named and described here, fed by
// the roles that see the events. The text the endpoint serves is the registry's own rendering.

import Prometheus

public enum Telemetry {
    public static let registry = PrometheusCollectorRegistry()

    // MARK: node role

    public static let guestsRunning = registry.makeGauge(
        name: "slurm_vm_guests_running", help: "Guests of Slurm jobs this node runs now.")
    public static let jobsRunning = registry.makeGauge(
        name: "slurm_vm_jobs_running", help: "Slurm jobs with guests on this node now.")
    /// A prolog's whole preparation: the image into the cache (by broadcast), the guests booted, every agent ready.
    public static let prologSeconds = registry.makeDurationHistogram(
        name: "slurm_vm_prolog_seconds", buckets: secondsBuckets,
        help: "Time from a job prolog's request to all of the node's guests ready, for jobs whose guests became ready.")
    /// From the image in the cache to every guest's agent ready.
    public static let bootSeconds = registry.makeDurationHistogram(
        name: "slurm_vm_boot_seconds", buckets: secondsBuckets,
        help: "Time from a job's image in the node cache to all of the node's guests answering their agent.")

    // MARK: node cache and broadcast

    public static let cacheBytes = registry.makeGauge(
        name: "slurm_vm_cache_bytes", help: "Bytes of image blobs in the node cache.")
    public static let cacheHits = registry.makeCounter(
        name: "slurm_vm_cache_hits_total", help: "Images a job needed that the node cache held whole.")
    public static let cacheMisses = registry.makeCounter(
        name: "slurm_vm_cache_misses_total", help: "Images a job needed that had to come over the network, in part or whole.")
    public static let cacheEvictions = registry.makeCounter(
        name: "slurm_vm_cache_evictions_total", help: "Images evicted from the node cache to make room under its quota.")
    public static let broadcastBytes = registry.makeCounter(
        name: "slurm_vm_broadcast_received_bytes_total", help: "Bytes of image blobs this node received by broadcast or fetch.")
    public static let broadcastRate = registry.makeValueHistogram(
        name: "slurm_vm_broadcast_rate_bytes_per_second",
        buckets: [1e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10],
        help: "Rate at which each image blob arrived at this node (its size over the time it took).")

    // MARK: catalog role

    public static let matchSeconds = registry.makeDurationHistogram(
        name: "slurm_vm_match_seconds",
        buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(20), .milliseconds(100), .milliseconds(500), .seconds(2)],
        help: "Time to match a submission's VM request against the catalog.")

    public enum MatchResult: String, CaseIterable, Sendable { case accepted, refused }
    public static func matched(_ r: MatchResult) { matches(r).increment() }

    static func matches(_ r: MatchResult) -> Counter {
        registry.makeCounter(
            name: "slurm_vm_matches_total", labels: [("result", r.rawValue)],
            help: "VM requests matched at submission, by result (refused: no image fits, or a bad request).")
    }

    // MARK: failures

    /// What failed, as an operator alerts on it (docs/operations.md).
    public enum Failure: String, CaseIterable, Sendable {
        /// A job's guests could not be prepared in its prolog (the job fails; the node is not drained).
        case prepare
        /// An image blob could not be received (part of a prepare failure).
        case broadcast
        /// A ready guest ended under a running job (its VMM killed, its kernel panicked, out of memory).
        case guestLost = "guest_lost"
        /// A task could not be started in a guest, or lost its guest while it ran.
        case exec
    }

    public static func failed(_ kind: Failure) { failures(kind).increment() }

    static func failures(_ kind: Failure) -> Counter {
        registry.makeCounter(
            name: "slurm_vm_failures_total", labels: [("kind", kind.rawValue)], help: "Failures by kind (docs/operations.md).")
    }

    /// Makes every series exist (static lets are made on first use) and every labelled one at zero,
    /// so a scrape lists them all before the first event.
    public static func start() {
        _ = (guestsRunning, jobsRunning, prologSeconds, bootSeconds, cacheBytes, cacheHits, cacheMisses, cacheEvictions)
        _ = (broadcastBytes, broadcastRate, matchSeconds)
        for f in Failure.allCases { _ = failures(f) }
        for r in MatchResult.allCases { _ = matches(r) }
    }

    /// The exposition text (Prometheus text format 0.0.4).
    public static func render() -> [UInt8] { registry.emitToBuffer() }

    static let secondsBuckets: [Duration] = [0.25, 0.5, 1, 2, 3, 5, 10, 20, 60, 120].map { .milliseconds(Int($0 * 1000)) }
}
