// The CLI's own surface, through the built binary: `slurm-vm match` takes exactly the plugin's --vm-*
// options (VMRequest.options is the one list), with the same help lines sbatch --help shows.

import Catalog
import Foundation
import Testing

@Suite struct CLIOptionTests {
    @Test func matchTakesExactlyTheRequestsOptions() {
        let r = Harness.run(["match", "--help"])
        #expect(r.code == 0, "\(r.err)")
        let listed = r.out.split(separator: "\n").compactMap { line -> String? in
            let t = line.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("--vm-") else { return nil }
            return String(t.dropFirst(5).prefix { $0 != " " && $0 != "<" })
        }
        #expect(listed == VMRequest.optionNames)
        for o in VMRequest.options {
            #expect(
                r.out.replacingOccurrences(of: "\n", with: " ").split(separator: " ").joined(separator: " ")
                    .contains(o.usage), "match --help lacks '\(o.usage)'")
        }
    }
}
