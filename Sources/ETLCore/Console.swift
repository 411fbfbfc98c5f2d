#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Standard error, shared by log lines and the live progress line.
///
/// On a terminal the progress line is redrawn in place; a log line first clears it, is
/// written whole on its own line, and the progress line is drawn again below it, so the two
/// never glue together. When stderr is not a terminal, progress becomes a plain line at most
/// every `plainInterval` (the first at once), so a log shows a run advancing and holds no
/// carriage return or escape. Every write goes through `Secrets.scrub`.
///
/// In the `json` format every line is one JSON object (time, level, message and fields), for
/// a log collector: no progress at all, and so no carriage return or escape either.
public final class Console: Sendable {
    public static let standardError = Console(fd: 2)

    public enum Format: String, CaseIterable, Sendable {
        case text, json
    }

    /// How much a line of the executable's own matters (log lines carry their logger's level).
    public enum Level: String, Sendable {
        case info, notice, warning, error
    }

    private struct State {
        var statusLine: String?
        var lastPlain: ContinuousClock.Instant?
        var plainInterval: Duration = .seconds(10)
        var quiet = false
        var format = Format.text
    }

    /// Every line is scrubbed of longer secrets as a last defence; messages that carry a
    /// library's text are scrubbed of every secret where they are made (`Redact.url`).
    static let scrubbedLength = 6

    private let fd: Int32
    public let isTerminal: Bool
    private let state = Mutex(State())

    init(fd: Int32) {
        self.fd = fd
        isTerminal = isatty(fd) == 1
    }

    /// Writes `line` on a line of its own; line breaks inside it (a library's multi-line
    /// message) become "; ", so that one event is one line of a log. In the json format it is
    /// the message of an event at `level`.
    public func line(_ line: String, level: Level = .info) {
        let single = line.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: "; ")
        if format == .json { return event(level: level.rawValue, message: single) }
        state.withLock { state in
            var out = state.statusLine == nil ? "" : "\r\u{1B}[K"
            out += Secrets.scrub(single, minimumLength: Self.scrubbedLength) + "\n"
            if let status = state.statusLine { out += status }
            write(out)
        }
    }

    /// The format lines are written in; text until `use` says otherwise.
    public var format: Format { state.withLock { $0.format } }

    public func use(_ format: Format) {
        state.withLock { $0.format = format }
    }

    /// One event as a JSON object on a line of its own: time, level, message, then `fields`
    /// in their order (one that repeats a name before it is left out). Each string is
    /// scrubbed before it is encoded, so that escaping cannot hide a secret.
    public func event(level: String, message: String, fields: [(String, String)] = [], time: Date = Date()) {
        var seen: Set<String> = []
        var members: [String] = []
        for (name, value) in [("time", Self.timestamp(time)), ("level", level), ("message", message)] + fields where seen.insert(name).inserted {
            members.append(Self.json(name) + ":" + Self.json(Secrets.scrub(value, minimumLength: Self.scrubbedLength)))
        }
        let text = "{" + members.joined(separator: ",") + "}\n"
        state.withLock { _ in write(text) }
    }

    /// ISO 8601 in UTC with milliseconds, as both formats write a line's time.
    public static func timestamp(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    /// `text` as a JSON string: quotes, backslashes and control characters escaped.
    static func json(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// How often progress is written as a plain line when stderr is not a terminal, and
    /// whether progress is shown at all (`quiet`: no).
    public func configureProgress(plainInterval: Duration, quiet: Bool) {
        state.withLock { state in
            state.plainInterval = plainInterval
            state.quiet = quiet
        }
    }

    /// Shows `text` as the live progress line on a terminal; elsewhere, as a plain line when
    /// the last one is `plainInterval` old.
    public func status(_ text: String) {
        state.withLock { state in
            guard !state.quiet, state.format == .text else { return }
            let scrubbed = Secrets.scrub(text, minimumLength: Self.scrubbedLength)
            guard isTerminal else {
                let now = ContinuousClock.now
                if let last = state.lastPlain, now - last < state.plainInterval { return }
                state.lastPlain = now
                write(scrubbed + "\n")
                return
            }
            // One physical line: a wrapped line could not be erased by "\r ESC[K" and would stay.
            state.statusLine = fitted(scrubbed)
            write("\r\u{1B}[K" + state.statusLine!)
        }
    }

    /// Ends the progress line: it stays on screen with its last state (`final`, when given),
    /// followed by a newline, so what comes next starts on a line of its own.
    public func endStatus(_ final: String? = nil) {
        state.withLock { state in
            state.lastPlain = nil
            guard let last = state.statusLine else { return }
            state.statusLine = nil
            write("\r\u{1B}[K" + Secrets.scrub(final ?? last, minimumLength: Self.scrubbedLength) + "\n")
        }
    }

    /// `text` cut to the terminal's width (less one column, so the cursor never wraps).
    private func fitted(_ text: String) -> String {
        var size = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 1, text.count >= Int(size.ws_col) else { return text }
        return String(text.prefix(Int(size.ws_col) - 2)) + "…"
    }

    private func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }
}
