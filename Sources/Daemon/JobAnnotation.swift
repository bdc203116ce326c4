// What a VM job got (image, guests, backend), in the job's AdminComment, so its user sees it where
// Slurm shows a job: `scontrol show job`, `squeue -O admincomment`, sacct. AdminComment, not Comment:
// the user's own comment stays theirs, and only an operator (slurm-vmd is root) may set this one.
// Set by `scontrol update` on a thread of its own after the prolog's reply, since a prolog must not
// wait on slurmctld; an AdminComment an admin set stays, after ours.

import Foundation
import Logging
import Support

enum JobAnnotation {
    static func say(job: UInt32, _ text: String, logger: Logger) {
        let t = Thread {
            let existing = current(job: job) ?? ""
            let others = existing.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty && !$0.hasPrefix("slurm-vm:")
            }
            let comment = ([text] + others).joined(separator: "; ")
            guard let r = try? Subprocess.run(["scontrol", "update", "JobId=\(job)", "AdminComment=\(comment)"]), r.status == 0 else {
                logger.warning("job \(job): cannot set its AdminComment to say what it got (scontrol update failed)")
                return
            }
        }
        t.start()
    }

    /// The job's AdminComment now (scontrol prints it last on its line, or not at all when empty).
    static func current(job: UInt32) -> String? {
        guard let r = try? Subprocess.run(["scontrol", "-o", "show", "job", String(job)]), r.status == 0,
            let at = r.text.range(of: " AdminComment=")
        else { return nil }
        // Up to the next " Key=" field.
        let rest = r.text[at.upperBound...]
        if let next = rest.range(of: #" [A-Za-z]+="#, options: .regularExpression) { return String(rest[..<next.lowerBound]) }
        return rest.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
