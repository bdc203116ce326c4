// Matching a VM request against the catalog: the job ad from the request, the image ads from the
// records, HTCondor's bilateral Requirements and Rank (ClassAd.Matchmaker), and, when nothing matches,
// the explainer's analysis.

import ClassAd

public struct CatalogMatch: Sendable {
    /// Every matching image, best first.
    public let matches: [ImageRecord]
    /// The analysis of the job against every image (always computed when nothing matches).
    public let explanation: String?
    public var best: ImageRecord? { matches.first }
}

extension Catalog {
    public func match(_ request: VMRequest, for who: Requester, explain: Bool = false) throws -> CatalogMatch {
        let job = try request.jobAd(for: who)
        let records = try list()
        let ads = try records.map { try $0.ad() }
        let result = Matchmaker(images: ads).match(job)
        let matches = result.matches.map { records[$0.imageIndex] }
        let why = (explain || matches.isEmpty) ? Explainer(images: ads).explain(job).text : nil
        return CatalogMatch(matches: matches, explanation: why)
    }
}
