// HOST:PORT as the configuration and the command line write a TCP address ("0.0.0.0:7420",
// "head:7420", "[::1]:9469"): the one reading of it for listeners and connections.

public enum HostPort {
    /// The host (brackets of an IPv6 literal removed; may be empty) and the port, or nil when `text`
    /// is not HOST:PORT with a port of 0 to 65535.
    public static func split(_ text: String) -> (host: String, port: UInt16)? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = Substring(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return (String(host), port)
    }
}
