/// Removes credentials from connection strings before they reach output or logs.
public enum Redact {
    /// `scheme://user:secret@host/db?password=x` becomes `scheme://user:***@host/db?password=***`.
    public static func url(_ url: String) -> String {
        var text = url
        if let scheme = text.range(of: "://"),
           let at = text.range(of: "@", options: .backwards, range: scheme.upperBound..<text.endIndex) {
            let userInfo = scheme.upperBound..<at.lowerBound
            if let colon = text[userInfo].firstIndex(of: ":") {
                text.replaceSubrange(text.index(after: colon)..<at.lowerBound, with: "***")
            }
        }
        return passwordParameters(text)
    }

    /// Masks `password=...` in query strings and libpq keyword/value strings.
    private static func passwordParameters(_ text: String) -> String {
        var result = ""
        var rest = Substring(text)
        while let r = rest.range(of: "password=", options: .caseInsensitive) {
            result += rest[..<r.upperBound] + "***"
            rest = rest[r.upperBound...]
            let end = rest.firstIndex(where: { $0 == "&" || $0 == " " }) ?? rest.endIndex
            rest = rest[end...]
        }
        return result + rest
    }
}
