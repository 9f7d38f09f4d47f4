import Testing
@testable import NostrCore

@Suite("JSON parser")
struct JSONTests {
    @Test(
        "malformed JSON is refused",
        arguments: [
            "", " ", "[", "]", "[1,]", "[,1]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "'x'", "\"\\x\"", "\"\\u12\"",
            "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "[1] 2",
            "\"unterminated", "\"a\u{1}b\"", "{\"a\":1,\"a\":2}", "NaN", "Infinity",
        ])
    func malformed(text: String) {
        #expect(throws: NostrError.self) { try JSON.parse(text) }
    }

    @Test("valid JSON parses exactly")
    func valid() throws {
        #expect(try JSON.parse(" [1, -0, 2.5e-3, true, false, null, \"\\ud83e\\udd84\\n\"] ") == .array([
            .number("1"), .number("-0"), .number("2.5e-3"), .bool(true), .bool(false), .null, .string("🦄\n"),
        ]))
        #expect(try JSON.parse("{\"a\":{\"b\":[]}}") == .object(["a": .object(["b": .array([])])]))
        #expect(try JSON.parse("12345678901234567890").int64 == nil)
        #expect(try JSON.parse("9223372036854775807").int64 == Int64.max)
        #expect(try JSON.parse("1.0").int64 == nil)
    }

    @Test("nesting is bounded")
    func depth() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: NostrError.self) { try JSON.parse(deep) }
        let ok = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        _ = try JSON.parse(ok)
    }

    @Test("invalid UTF-8 in strings is refused")
    func invalidUTF8() throws {
        let bytes: [UInt8] = [0x22, 0xC3, 0x28, 0x22]
        #expect(throws: NostrError.self) { try bytes.withUnsafeBufferPointer { try JSON.parse(bytes: $0) } }
    }
}
