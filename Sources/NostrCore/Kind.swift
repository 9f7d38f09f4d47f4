/// An event kind (NIP-01): an integer 0–65535 whose range decides how relays store the event.
public struct Kind: RawRepresentable, Hashable, Sendable, Comparable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public let rawValue: UInt16

    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt16) { self.rawValue = value }

    /// How relays treat events of a kind (NIP-01 "Kinds").
    public enum Classification: Sendable, Hashable {
        /// Stored.
        case regular
        /// Only the newest per (pubkey, kind) is kept.
        case replaceable
        /// Relayed, never stored.
        case ephemeral
        /// Only the newest per (pubkey, kind, `d` tag) is kept.
        case addressable
    }

    public var classification: Classification {
        switch rawValue {
        case 0, 3, 10000..<20000: return .replaceable
        case 20000..<30000: return .ephemeral
        case 30000..<40000: return .addressable
        default: return .regular
        }
    }

    public var isReplaceable: Bool { classification == .replaceable }
    public var isEphemeral: Bool { classification == .ephemeral }
    public var isAddressable: Bool { classification == .addressable }

    public static func < (lhs: Kind, rhs: Kind) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }

    public static let metadata: Kind = 0
    public static let textNote: Kind = 1
    public static let contacts: Kind = 3
    public static let encryptedDirectMessage: Kind = 4
    public static let deletion: Kind = 5
    public static let seal: Kind = 13
    public static let giftWrap: Kind = 1059
    public static let relayList: Kind = 10002
    public static let dmRelayList: Kind = 10050
    public static let clientAuthentication: Kind = 22242
    public static let nostrConnect: Kind = 24133
    public static let walletInfo: Kind = 13194
    public static let walletRequest: Kind = 23194
    public static let walletResponse: Kind = 23195
    public static let handlerInformation: Kind = 31990
}

/// One tag: a non-empty-by-convention array of strings, name first (NIP-01).
public struct Tag: Hashable, Sendable, ExpressibleByArrayLiteral, CustomStringConvertible {
    public var fields: [String]

    public init(_ fields: [String]) { self.fields = fields }
    public init(arrayLiteral elements: String...) { self.fields = elements }

    /// The tag's name (its first field), or `nil` for an empty tag.
    public var name: String? { fields.first }
    /// The tag's value (its second field).
    public var value: String? { fields.count > 1 ? fields[1] : nil }

    public var description: String {
        var writer = JSONWriter()
        writer.stringArray(fields)
        return writer.text
    }
}

/// Seconds since the Unix epoch, as events carry them.
public typealias Timestamp = Int64

extension Timestamp {
    /// The current time in whole seconds.
    public static var now: Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
