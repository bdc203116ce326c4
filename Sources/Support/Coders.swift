// JSON as slurm-vm's files and the blob service write it: ISO 8601 dates, sorted keys (stable bytes).

import Foundation

extension JSONDecoder {
    public static var iso: JSONDecoder { let d = JSONDecoder(); d.dateDecodingStrategy = .iso8601; return d }
}

extension JSONEncoder {
    public static var iso: JSONEncoder { let e = JSONEncoder(); e.dateEncodingStrategy = .iso8601; e.outputFormatting = [.sortedKeys]; return e }
}
