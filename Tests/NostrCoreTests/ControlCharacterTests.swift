import NostrCore
import Testing

@Suite("Text from the network, escaped for terminals and logs")
struct ControlCharacterTests {
    @Test("escape sequences, C1 controls, DEL, newlines and bidirectional overrides are written out; other text is kept")
    func escaping() {
        #expect("plain ascii, nothing to do".escapingControlCharacters == "plain ascii, nothing to do")
        #expect("kind 62\u{1b}[5A\u{1b}[2Kkind 1".escapingControlCharacters == "kind 62\\u{1b}[5A\\u{1b}[2Kkind 1")
        #expect("a\nb\r\tc\u{7f}".escapingControlCharacters == "a\\u{a}b\\u{d}\\u{9}c\\u{7f}")
        #expect("\u{9b}31m".escapingControlCharacters == "\\u{9b}31m")
        #expect("evil\u{202e}txt.exe".escapingControlCharacters == "evil\\u{202e}txt.exe")
        #expect("café ☕ 日本".escapingControlCharacters == "café ☕ 日本")
    }
}
