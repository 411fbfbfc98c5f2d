import Synchronization

/// Removes credentials from connection strings before they reach output or logs.
public enum Redact {
    /// `scheme://user:secret@host/db?password=x` becomes `scheme://user:***@host/db?password=***`,
    /// and every registered secret (see `Secrets`) becomes `***`.
    public static func url(_ url: String) -> String {
        var text = url
        if let scheme = text.range(of: "://"),
           let at = text.range(of: "@", options: .backwards, range: scheme.upperBound..<text.endIndex) {
            let userInfo = scheme.upperBound..<at.lowerBound
            if let colon = text[userInfo].firstIndex(of: ":") {
                text.replaceSubrange(text.index(after: colon)..<at.lowerBound, with: "***")
            }
        }
        return Secrets.scrub(passwordParameters(text))
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

/// The passwords this process was given, so that no message can print one, whichever
/// library wrote the message and however it quoted the password (raw, percent-decoded).
///
/// The connection wrappers register what their library's own parser finds (libpq's
/// `PQconninfoParse`, libmongoc's `mongoc_uri_t`); `register(url:)` also registers what a
/// URL's user-info holds, for strings the libraries refuse to parse at all.
public enum Secrets {
    private static let known = Mutex<[String]>([])

    /// Registers `secret`, unless it is one of `visible` (the same URL's user or database
    /// name, printed in plain sight anyway: masking those would mask every mention of them).
    public static func register(_ secret: String?, visible: [String?] = []) {
        guard let secret, secret.count >= 2, !visible.contains(secret) else { return }
        known.withLock { list in
            guard !list.contains(secret) else { return }
            list.append(secret)
            // Longest first, so a secret containing another is masked whole.
            list.sort { $0.count > $1.count }
        }
    }

    /// Registers the password of a URL's user-info, as written and percent-decoded.
    public static func register(url: String) {
        guard let scheme = url.range(of: "://"),
              let at = url.range(of: "@", options: .backwards, range: scheme.upperBound..<url.endIndex),
              let colon = url[scheme.upperBound..<at.lowerBound].firstIndex(of: ":")
        else { return }
        let raw = String(url[url.index(after: colon)..<at.lowerBound])
        let user = String(url[scheme.upperBound..<colon])
        let path = url[at.upperBound...].split(separator: "/", maxSplits: 1).dropFirst().first
        let database = path.map { String($0.prefix { $0 != "?" }) }
        register(raw, visible: [user, database])
        register(raw.removingPercentEncodingLeniently, visible: [user, database])
    }

    /// Replaces each registered secret of at least `minimumLength` characters that stands as
    /// a token of its own (between quotes, spaces, `:`, `@`, `/`, `=`, `,` or the ends), so
    /// that a short password such as `etl` does not mask the word `etl-job`.
    public static func scrub(_ text: String, minimumLength: Int = 1) -> String {
        let secrets = known.withLock { $0 }.filter { $0.count >= minimumLength }
        var result = text
        for secret in secrets where result.contains(secret) {
            result = mask(secret, in: result)
        }
        return result
    }

    private static let boundaries: Set<Character> = [" ", "\"", "'", ":", "@", "/", "=", ",", "\n", "\t", "(", ")", "&", "?", ";"]

    private static func mask(_ secret: String, in text: String) -> String {
        var result = ""
        var rest = Substring(text)
        while let r = rest.range(of: secret) {
            let before = r.lowerBound == rest.startIndex ? (result.last ?? " ") : rest[rest.index(before: r.lowerBound)]
            let after = r.upperBound == rest.endIndex ? " " : rest[r.upperBound]
            let standsAlone = boundaries.contains(before) && boundaries.contains(after)
            result += rest[..<r.lowerBound] + (standsAlone ? "***" : secret)
            rest = rest[r.upperBound...]
        }
        return result + rest
    }
}

extension String {
    /// Decodes the `%XX` escapes that are valid and keeps the rest as written.
    var removingPercentEncodingLeniently: String {
        var bytes: [UInt8] = []
        let utf8 = Array(self.utf8)
        var i = 0
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "%"), i + 2 < utf8.count, let h = hex(utf8[i + 1]), let l = hex(utf8[i + 2]) {
                bytes.append(h << 4 | l)
                i += 3
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
