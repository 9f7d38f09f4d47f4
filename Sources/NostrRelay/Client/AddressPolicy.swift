import Foundation
import NIOPosix

/// Which addresses a requester may make us connect to: the relays and URLs a request names (a DVM job's
/// inputs and `relays` tag, a requester's inbox relays) must not lead the service into its own host or network.
package enum AddressPolicy {
    /// Why a host was not connected to.
    package struct Refusal: Error, CustomStringConvertible {
        package let description: String
    }

    /// Looks `host` up (off the calling thread) and returns its addresses; throws ``Refusal`` if it does not
    /// resolve or any address it resolves to is private (``isPrivate(_:)``). `host` may be a literal address,
    /// an IPv6 one in brackets or not.
    package static func checked(
        _ host: String, lookup: @escaping @Sendable (String) -> [[UInt8]] = resolve
    ) async throws -> [[UInt8]] {
        let trimmed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let addresses = try await NIOThreadPool.singleton.runIfActive { lookup(trimmed) }
        guard !addresses.isEmpty else { throw Refusal(description: "the host does not resolve") }
        if addresses.contains(where: isPrivate) {
            throw Refusal(description: "the host is a private address (loopback, private, link-local or reserved)")
        }
        return addresses
    }

    /// The addresses `host` resolves to (a literal address resolves to itself).
    package static func resolve(_ host: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [[UInt8]] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let address = entry.pointee.ai_addr {
                switch Int32(address.pointee.sa_family) {
                case AF_INET:
                    address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                        addresses.append(withUnsafeBytes(of: v4.pointee.sin_addr) { Array($0) })
                    }
                case AF_INET6:
                    address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                        addresses.append(withUnsafeBytes(of: v6.pointee.sin6_addr) { Array($0) })
                    }
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        return addresses
    }

    /// `address` (4 or 16 bytes) as text, as a URL host or a socket address takes it (IPv6 without brackets).
    package static func text(_ address: [UInt8]) -> String? {
        let family: Int32
        switch address.count {
        case 4: family = AF_INET
        case 16: family = AF_INET6
        default: return nil
        }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written = address.withUnsafeBytes { bytes in inet_ntop(family, bytes.baseAddress, &buffer, socklen_t(buffer.count)) }
        guard written != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Loopback, private, shared, link-local, multicast, unspecified and reserved ranges (IPv4, IPv6 and
    /// IPv4-mapped IPv6).
    package static func isPrivate(_ address: [UInt8]) -> Bool {
        if address.count == 4 {
            let (a, b) = (address[0], address[1])
            return a == 0 || a == 10 || a == 127 || a >= 224
                || (a == 100 && (64...127).contains(b)) || (a == 169 && b == 254)
                || (a == 172 && (16...31).contains(b)) || (a == 192 && b == 168)
        }
        guard address.count == 16 else { return true }
        if address[0..<10].allSatisfy({ $0 == 0 }) && address[10] == 0xff && address[11] == 0xff {
            return isPrivate(Array(address[12..<16]))
        }
        if address[0..<15].allSatisfy({ $0 == 0 }) { return true }  // :: and ::1
        return address[0] & 0xfe == 0xfc || (address[0] == 0xfe && address[1] & 0xc0 == 0x80) || address[0] == 0xff
    }
}
