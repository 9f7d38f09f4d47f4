import NostrCore

/// A relay's WebSocket address (`ws://` or `wss://`), in one canonical spelling so the same relay is never
/// connected twice: scheme and host lower-cased, default port and a lone trailing `/` dropped.
public struct RelayURL: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The canonical URL text.
    public let string: String
    /// Whether the connection uses TLS (`wss://`).
    public let isSecure: Bool

    /// Parses and normalises `text`; throws for anything but a `ws://` or `wss://` URL with a host.
    public init(_ text: String) throws {
        let trimmed = text.trimmingWhitespace()
        let lower = trimmed.lowercased()
        let secure: Bool
        if lower.hasPrefix("wss://") {
            secure = true
        } else if lower.hasPrefix("ws://") {
            secure = false
        } else {
            throw NostrError(.invalidShape, "a relay URL starts with ws:// or wss://: \(text.prefix(100))")
        }
        let rest = trimmed.dropFirst(secure ? 6 : 5)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var authority = rest[..<authorityEnd].lowercased()
        var path = String(rest[authorityEnd...])
        guard !authority.isEmpty, !authority.contains("@"), !authority.contains(where: \.isWhitespace) else {
            throw NostrError(.invalidShape, "a relay URL needs a host: \(text.prefix(100))")
        }
        if let fragment = path.firstIndex(of: "#") { path = String(path[..<fragment]) }
        // A host name or IPv4 address and at most one port: the WebSocket client reads the host up to the first
        // `:`, so anything else (an IPv6 literal, a second colon) would connect somewhere other than ``host``
        // says — and ``host`` is what address checks look at.
        let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, !parts[0].isEmpty, !authority.contains("["), !authority.contains("]"),
            parts.count == 1 || (parts[1].allSatisfy(\.isASCII) && UInt16(parts[1]).map { $0 > 0 } == true)
        else {
            throw NostrError(.invalidShape, "a relay URL needs a host name or IPv4 address and at most a port: \(text.prefix(100))")
        }
        let defaultPort = secure ? ":443" : ":80"
        if authority.hasSuffix(defaultPort) { authority.removeLast(defaultPort.count) }
        if path == "/" { path = "" }
        self.isSecure = secure
        self.string = (secure ? "wss://" : "ws://") + authority + path
    }

    /// The host: a name or an IPv4 address (where the WebSocket client connects).
    public var host: String {
        String(string.dropFirst(isSecure ? 6 : 5).prefix { $0 != ":" && $0 != "/" && $0 != "?" })
    }

    public var description: String { string }

    public static func < (lhs: RelayURL, rhs: RelayURL) -> Bool { lhs.string < rhs.string }
}

extension StringProtocol {
    func trimmingWhitespace() -> Substring {
        let s = self[...]
        guard let first = s.firstIndex(where: { !$0.isWhitespace }), let last = s.lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return Substring(s[first...last])
    }
}
