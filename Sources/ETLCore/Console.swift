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
public final class Console: Sendable {
    public static let standardError = Console(fd: 2)

    private struct State {
        var statusLine: String?
        var lastPlain: ContinuousClock.Instant?
        var plainInterval: Duration = .seconds(10)
        var quiet = false
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
    /// message) become "; ", so that one event is one line of a log.
    public func line(_ line: String) {
        let single = line.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: "; ")
        state.withLock { state in
            var out = state.statusLine == nil ? "" : "\r\u{1B}[K"
            out += Secrets.scrub(single, minimumLength: Self.scrubbedLength) + "\n"
            if let status = state.statusLine { out += status }
            write(out)
        }
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
            guard !state.quiet else { return }
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
