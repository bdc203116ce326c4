// The matching layer: a submission (options, the job's shape, the cluster's node sizes, who asks) in,
// the accepted request or the refusal the user sees out. slurm-vmd answers sbatch with it and
// `slurm-vm match` prints it, so the dry run and the submission cannot disagree.
//
// Order: the options' values (VMRequest), the job's sizes (Sizing: guests and vCPUs decided here),
// an image asked for by name that does not exist, then HTCondor's bilateral Requirements and Rank
// (ClassAd.Matchmaker) with the explainer's analysis when nothing matches.

import ClassAd
import Foundation

/// Everything a submission brings to matching.
public struct Submission: Sendable {
    public var request: VMRequest
    public var shape: JobShape
    /// The cluster's node sizes (nil: unknown, e.g. `slurm-vm match` without Slurm).
    public var nodeCPUs: NodeCPUs?
    public var requester: Requester
    public init(request: VMRequest, shape: JobShape = JobShape(), nodeCPUs: NodeCPUs? = nil, requester: Requester) {
        self.request = request; self.shape = shape; self.nodeCPUs = nodeCPUs; self.requester = requester
    }

    /// A submission from what a front end received: the raw --vm-* strings (by name without "--vm-")
    /// and the submitting command. The plugin's match call and `slurm-vm match` both come here.
    public static func parse(
        options: [String: String], command: SubmitCommand?, nodeCPUs: NodeCPUs?,
        requester: Requester
    ) throws -> Submission {
        Submission(
            request: try VMRequest.fromOptions(options), shape: try command.map { try JobShape.of($0) } ?? JobShape(),
            nodeCPUs: nodeCPUs, requester: requester)
    }
}

/// A request as matched at submission: travels with the job to every node (the plugin's VM_REQUEST),
/// carrying every number the nodes need, so no node decides one again.
public struct AcceptedRequest: Codable, Sendable, Equatable {
    /// The options as the user gave them.
    public var request: VMRequest
    /// Guests and vCPUs per guest.
    public var sizing: Sizing
    /// Memory per guest: --vm-mem, else the chosen image's MinMemoryMB.
    public var memoryMB: Int
    /// The image chosen by the matchmaker, by digest (a later catalog change does not move the job).
    public var image: String
    public var imageLabel: String
    public init(request: VMRequest, sizing: Sizing, memoryMB: Int, image: String, imageLabel: String) {
        self.request = request; self.sizing = sizing; self.memoryMB = memoryMB; self.image = image; self.imageLabel = imageLabel
    }
}

public struct CatalogMatch: Sendable {
    /// The job ad the matchmaker saw (nil when the request was refused before matching).
    public let jobAd: ClassAd?
    /// Every matching image, best first.
    public let matches: [ImageRecord]
    /// The request with the best image (nil: refused).
    public let accepted: AcceptedRequest?
    /// Why the request was refused, as the user sees it (nil: accepted).
    public let refusal: String?
    /// The analysis of the job against every image (computed when asked, and always when nothing matches).
    public let explanation: String?
    public var best: ImageRecord? { matches.first }
}

extension Catalog {
    public func match(_ s: Submission, explain: Bool = false) throws -> CatalogMatch {
        func refuse(_ why: String, ad: ClassAd? = nil, explanation: String? = nil) -> CatalogMatch {
            CatalogMatch(jobAd: ad, matches: [], accepted: nil, refusal: why, explanation: explanation)
        }
        let sizing: Sizing, job: ClassAd
        do {
            sizing = try s.request.sizing(shape: s.shape, nodeCPUs: s.nodeCPUs)
            job = try s.request.jobAd(for: s.requester, sizing: sizing)
        } catch { return refuse(error.description) }
        let prepared = try preparedImages()
        prepared.lock.lock()
        defer { prepared.lock.unlock() }
        let records = prepared.records, ads = prepared.ads
        let ranked = prepared.matchmaker.match(job).matches
        let matches = ranked.map { records[$0.imageIndex] }
        guard let best = ranked.first else {
            // An image asked for by name that the catalog does not hold: say so directly, with what exists.
            if let name = s.request.image, let ref = try? ImageReference(name) {
                do { _ = try resolve(ref) } catch let e as CatalogError {
                    if case .noSuchImage = e { return refuse("--vm-image: \(e)", ad: job) }
                }
            }
            let why = Explainer(images: ads).explain(job).text
            return refuse("no guest image matches this request" + (why.isEmpty ? "" : "\n" + why), ad: job, explanation: why)
        }
        let why = explain ? Explainer(images: ads).explain(job).text : nil
        let image = records[best.imageIndex]
        let accepted = AcceptedRequest(
            request: s.request, sizing: sizing, memoryMB: s.request.memoryMB ?? ImageRecord.minMemoryMB(in: ads[best.imageIndex]),
            image: image.digest, imageLabel: image.label)
        return CatalogMatch(jobAd: job, matches: matches, accepted: accepted, refusal: nil, explanation: why)
    }
}

/// The catalog's records, their ads and a matchmaker over them: read, parsed and compiled once, and
/// used by every submission until the catalog changes (a submission then waits for its own match
/// only, not for reading the catalog). `lock` serializes the matches: the exact evaluator's match
/// record binds the shared image ads for the length of a pair.
final class PreparedImages: @unchecked Sendable {
    let key: [Int64]
    let records: [ImageRecord]
    let ads: [ClassAd]
    let matchmaker: Matchmaker
    let lock = NSLock()
    init(key: [Int64], records: [ImageRecord], ads: [ClassAd]) {
        self.key = key; self.records = records; self.ads = ads; matchmaker = Matchmaker(images: ads)
        matchmaker.prepare()
    }
}

extension Catalog {
    /// The prepared images, made again when the catalog changed since: SQLite's data_version counts
    /// other connections' commits (`slurm-vm image import` in another process), total_changes() this
    /// connection's own. A change that lands while the images are read makes the next call read again.
    func preparedImages() throws -> PreparedImages {
        let key = try db.read { db in
            [try Int64.fetchOne(db, sql: "PRAGMA data_version") ?? -1, try Int64.fetchOne(db, sql: "SELECT total_changes()") ?? -1]
        }
        preparedLock.lock()
        let known = prepared
        preparedLock.unlock()
        if let known, known.key == key { return known }
        let records = try list()
        let fresh = PreparedImages(key: key, records: records, ads: try records.map { try $0.ad() })
        preparedLock.lock()
        prepared = fresh
        preparedLock.unlock()
        return fresh
    }
}
