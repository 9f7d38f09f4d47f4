extension String {
    /// The text with control characters (C0, DEL, C1) and bidirectional-formatting characters written as
    /// `\u{…}`: what a terminal or a log shows of text from the network, so that it cannot move the cursor,
    /// rewrite lines already shown, or reorder what is displayed.
    public var escapingControlCharacters: String {
        if utf8.allSatisfy({ (0x20..<0x7f).contains($0) }) { return self }
        var escaped = ""
        escaped.unicodeScalars.reserveCapacity(unicodeScalars.count)
        for scalar in unicodeScalars {
            if scalar.properties.generalCategory == .control || scalar.properties.isBidiControl {
                escaped += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }
}
