// Content digests as slurm-vm writes them: "sha256:" and 64 lowercase hex digits. The one check of a
// full digest that arrives from outside (the blob service, push orders).

public enum Digests {
    public static func isSHA256(_ s: String) -> Bool {
        s.hasPrefix("sha256:") && s.utf8.count == 71
            && s.utf8.dropFirst(7).allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}
