import Foundation
import TestSupport

/// The project's documentation as the tests read it: README.md, CONTRIBUTING.md and every
/// page under docs/ (CHANGELOG.md too, for its links: it is history, so its command lines
/// are not held to today's flags).
struct Page {
    /// The path from the package root, e.g. "docs/guide/sync.md".
    let path: String
    let text: String

    static let root = Services.packageRoot.path

    static func all() throws -> [Page] {
        var paths = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
        let docs = URL(fileURLWithPath: root + "/docs")
        let walker = FileManager.default.enumerator(at: docs, includingPropertiesForKeys: nil)
        while let url = walker?.nextObject() as? URL {
            if url.pathExtension == "md" { paths.append(String(url.path.dropFirst(root.count + 1))) }
        }
        return try paths.sorted().map { try Page(path: $0, text: String(contentsOfFile: root + "/" + $0, encoding: .utf8)) }
    }

    /// Each line with whether it is inside a fenced code block, and the block's language.
    var lines: [(number: Int, text: String, fence: String?)] {
        var result: [(Int, String, String?)] = []
        var fence: String?
        for (index, line) in text.components(separatedBy: "\n").enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("```") {
                fence = fence == nil ? String(trimmed.dropFirst(3)).trimmingCharacters(in: .whitespaces) : nil
                continue
            }
            result.append((index + 1, line, fence))
        }
        return result
    }

    /// The anchors GitHub gives this page's headings: the heading's text as rendered (code
    /// spans and links reduced to their text), lower-cased, every character but letters,
    /// digits, spaces, `-` and `_` removed, spaces made `-`; a repeated anchor gets `-1`, `-2`, …
    var anchors: Set<String> {
        var seen: [String: Int] = [:]
        var result = Set<String>()
        for line in lines where line.fence == nil {
            guard let match = line.text.firstMatch(of: #/^#{1,6}\s+(.*?)\s*#*\s*$/#) else { continue }
            let rendered = String(match.1)
                .replacing(#/\[([^\]]*)\]\([^)]*\)/#) { $0.1 }
                .replacingOccurrences(of: "`", with: "")
            let slug = String(rendered.lowercased().compactMap { c -> Character? in
                if c == " " { return "-" }
                return c.isLetter || c.isNumber || c == "-" || c == "_" ? c : nil
            })
            let count = seen[slug, default: 0]
            seen[slug] = count + 1
            result.insert(count == 0 ? slug : "\(slug)-\(count)")
        }
        return result
    }

    /// Every inline link `[text](target)` outside code, with its line.
    var links: [(line: Int, target: String)] {
        lines.filter { $0.fence == nil }.flatMap { line in
            line.text.replacing(#/`[^`]*`/#, with: "").matches(of: #/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/#).map { (line.number, String($0.1)) }
        }
    }

    /// Every `etl-job …` invocation: in shell code blocks (a `$ ` prompt dropped, `\`
    /// continuations joined) and in inline code spans that begin with `etl-job `.
    var commandLines: [(line: Int, text: String)] {
        var result: [(Int, String)] = []
        var pending = ""
        var pendingLine = 0
        for line in lines {
            if let fence = line.fence {
                guard ["", "sh", "bash", "shell", "console"].contains(fence) else { continue }
                var text = line.text
                if text.hasPrefix("$ ") { text.removeFirst(2) }
                if pending.isEmpty { pendingLine = line.number }
                if text.hasSuffix("\\") {
                    pending += text.dropLast() + " "
                    continue
                }
                result.append((pendingLine, pending + text))
                pending = ""
            } else {
                for span in line.text.matches(of: #/`(etl-job [^`]*)`/#) {
                    result.append((line.number, String(span.1)))
                }
            }
        }
        return result.filter { $0.1.contains("etl-job") }
    }
}

/// A shell line split as the shell would split it, well enough for documentation: words
/// (quotes removed; the text inside quotes kept as one word), and the operators that end a
/// command (`;`, `&&`, `||`, `&`, a pipe), comments dropped.
enum Shell {
    enum Token: Equatable { case word(String, quoted: Bool), end }

    static func tokens(_ line: String) -> [Token] {
        var tokens: [Token] = []
        var word = "", quoted = false, inWord = false
        var quote: Character?
        var brackets = 0
        func flush() {
            if inWord { tokens.append(.word(word, quoted: quoted)) }
            word = ""; quoted = false; inWord = false
        }
        var chars = Array(line)[...]
        while let c = chars.popFirst() {
            if let q = quote {
                if c == q { quote = nil } else { word.append(c) }
                continue
            }
            switch c {
            case "'", "\"": quote = c; quoted = true; inWord = true
            case " ", "\t": flush()
            case "#" where !inWord: flush(); return tokens
            case "[": brackets += 1; word.append(c); inWord = true
            case "]": brackets -= 1; word.append(c); inWord = true
            // Inside [ ] a bar separates alternatives (a usage line), outside it is a pipe.
            case "|" where brackets > 0: word.append(c); inWord = true
            case ";", "&", "|":
                flush()
                if chars.first == c { chars.removeFirst() }
                tokens.append(.end)
            default: word.append(c); inWord = true
            }
        }
        flush()
        return tokens
    }

    /// The argument lists of every `etl-job` invocation in a line (an `etl-job` inside a
    /// quoted word, as in `ssh host "etl-job worker …"`, included). `etl-job` is a command
    /// where a shell runs one: the first word (after `VAR=value` assignments, `sudo -u USER`,
    /// `exec`, `time`), or a path ending in `/etl-job` anywhere (`perf record … .build/release/etl-job`);
    /// elsewhere it is a word of prose in a block (`a Job of etl-job workers`).
    static func invocations(_ line: String) -> [[String]] {
        var result: [[String]] = []
        var current: [String]?
        var previous = ""
        var first = true
        for token in tokens(line) + [.end] {
            guard case .word(let word, let quoted) = token else {
                if let current { result.append(current) }
                current = nil
                first = true
                previous = ""
                continue
            }
            if quoted, word.contains("etl-job ") { result += invocations(word) }
            if current != nil {
                // A redirection ends the arguments.
                if word.first == ">" || word.first == "<" || word.hasPrefix("2>") || word.hasPrefix("1>") {
                    result.append(current!)
                    current = nil
                } else {
                    current!.append(quoted ? protect(word) : word)
                }
            } else if !quoted, word == "etl-job" && first && previous != "-u" || word.hasSuffix("/etl-job") {
                current = []
            }
            let launcher = word.contains("=") && word.first?.isLetter == true || ["sudo", "-u", "exec", "time"].contains(word) || previous == "-u"
            if !launcher { first = false }
            previous = word
        }
        return result
    }

    /// A usage line's variants: `[--x y]` is taken as given, `[a | b]` and `a|b` each way,
    /// `...` and `…` left out. `["status", "[--json]"]` gives `[["status", "--json"]]`.
    /// Quoted words were protected by `invocations` and come out as they were.
    static func variants(_ arguments: [String]) -> [[String]] {
        expand(arguments.joined(separator: " ")).map { variant in
            variant.split(separator: " ").map(String.init)
                .filter { !["...", "…"].contains($0) }
                .map { word in word.contains("|") ? String(word.split(separator: "|").first ?? "") : word }
                .map(unprotect)
        }
    }

    private static let protected: [(String, String)] = [(" ", "\u{2}"), ("[", "\u{3}"), ("]", "\u{4}"), ("|", "\u{5}")]
    private static func protect(_ word: String) -> String {
        protected.reduce(word) { $0.replacingOccurrences(of: $1.0, with: $1.1) }
    }
    private static func unprotect(_ word: String) -> String {
        protected.reduce(word) { $0.replacingOccurrences(of: $1.1, with: $1.0) }
    }

    private static func expand(_ text: String) -> [String] {
        guard let open = text.firstIndex(of: "[") else { return [text] }
        var depth = 0
        var close = open
        for index in text[open...].indices {
            if text[index] == "[" { depth += 1 }
            if text[index] == "]" { depth -= 1; if depth == 0 { close = index; break } }
        }
        guard depth == 0 else { return [text.replacingOccurrences(of: "[", with: " ")] }
        let inner = String(text[text.index(after: open)..<close])
        let before = String(text[..<open]), after = String(text[text.index(after: close)...])
        let alternatives = splitTopLevel(inner)
        return alternatives.flatMap { alternative in
            expand(before + " " + alternative + " " + after)
        }
    }

    /// `a | b` at the top level of a group (not inside a nested one).
    private static func splitTopLevel(_ text: String) -> [String] {
        var parts: [String] = [], current = "", depth = 0
        for c in text {
            if c == "[" { depth += 1 }
            if c == "]" { depth -= 1 }
            if c == "|", depth == 0, current.last == " " {
                parts.append(current); current = ""
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        return parts
    }
}
