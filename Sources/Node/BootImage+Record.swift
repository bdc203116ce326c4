// A catalog record as the runner boots it: the artefacts' paths in a blob store (the catalog's or
// the node's cache), the record's command line and limits.

import Catalog
import Runner

extension BootImage {
    public init(_ rec: ImageRecord, blobs: BlobStore) throws {
        guard let kernel = rec.artefact("kernel") else {
            throw RunnerError.invalidRequest("image \(rec.label) has no kernel; re-import it with one")
        }
        let ad = try rec.ad()  // once, for both sizes
        self.init(
            name: rec.name, label: rec.label, digest: rec.digest, kernel: blobs.path(of: kernel.digest), kernelDigest: kernel.digest,
            initrd: rec.artefact("initrd").map { blobs.path(of: $0.digest) },
            disk: rec.artefact("disk").map { blobs.path(of: $0.digest) },
            cmdline: rec.cmdline, minMemoryMB: ImageRecord.minMemoryMB(in: ad), maxVCPUs: ImageRecord.maxVCPUs(in: ad))
    }
}
