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
        let defaultPort = secure ? ":443" : ":80"
        if authority.hasSuffix(defaultPort) { authority.removeLast(defaultPort.count) }
        if path == "/" { path = "" }
        self.isSecure = secure
        self.string = (secure ? "wss://" : "ws://") + authority + path
    }

    /// The host: a name or a literal address (an IPv6 address without its brackets).
    public var host: String {
        let authority = string.dropFirst(isSecure ? 6 : 5).prefix { $0 != "/" && $0 != "?" }
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            return String(authority[authority.index(after: authority.startIndex)..<close])
        }
        if let colon = authority.lastIndex(of: ":") { return String(authority[..<colon]) }
        return String(authority)
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
