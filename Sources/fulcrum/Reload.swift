import ArgumentParser
import Foundation
import Fulcrum
import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

extension FulcrumCommand {
    /// `fulcrum reload`: validate, then signal the running process, as `nginx -s reload` does.
    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a configuration file as check does, then send SIGHUP to the running fulcrum so it re-reads its file.",
            discussion: """
            An invalid file is reported as check reports it and nothing is signalled (exit 1). The process is \
            found through --pid, else --pid-file, else the file's pid_file key. The running process re-reads \
            the file it was started with (its --config), so FILE must be that file: another one is refused \
            (exit 1, nothing signalled). It applies what changed; its log says `configuration reloaded`, or \
            `reload failed` with the errors.
            """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: ArgumentHelp("The process to signal.", valueName: "pid"))
        var pid: Int32?

        @Option(help: ArgumentHelp("A file holding the process id (default: the file's pid_file).", valueName: "path"))
        var pidFile: String?

        func validate() throws {
            if let pid, pid <= 0 { throw ValidationError("--pid must be a process id above 0, not \(pid)") }
        }

        func run() throws {
            guard let config = loadOrReport(options.config) else { throw ExitCode(1) }
            print("configuration \(options.config) is valid")
            let target: ReloadTarget
            do {
                target = try ReloadTarget.find(pid: pid, pidFile: pidFile ?? config.pidFile,
                                               fromOption: pidFile != nil, config: options.config)
            } catch {
                printError("fulcrum reload: \(error)")
                throw ExitCode(1)
            }
            if let problem = target.running?.otherConfigProblem(options.config, command: "reload", origin: target.origin,
                                                                nothing: "nothing was signalled") {
                printError("fulcrum reload: \(problem)")
                throw ExitCode(1)
            }
            guard kill(target.pid, SIGHUP) == 0 else {
                printError("fulcrum reload: cannot signal process \(target.pid)\(target.origin): \(String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
            print("sent SIGHUP to process \(target.pid)\(target.origin): it re-reads its configuration file and applies what changed")
            print("its log shows the outcome: `configuration reloaded` (then `reload applied by every worker`), or `reload failed` with the errors")
        }
    }
}

/// Loads and validates a configuration file; on errors prints them to standard error, as `fulcrum check`
/// does, and returns nil.
func loadOrReport(_ path: String) -> FulcrumConfig? {
    do {
        return try ConfigFile.load(path: path)
    } catch {
        printError("\(error)")
        return nil
    }
}

/// The running process `fulcrum reload` signals, and how it was found.
struct ReloadTarget {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let pid: Int32
    /// ` (from pid file PATH)`, or empty for `--pid`.
    let origin: String
    /// How the process was started, when its command line is readable.
    let running: RunningCommand?

    static func find(pid: Int32?, pidFile: String?, fromOption: Bool, config: String) throws(Failure) -> ReloadTarget {
        if let pid {
            try ensureExists(pid, origin: "")
            return ReloadTarget(pid: pid, origin: "", running: RunningCommand(pid: pid))
        }
        guard let path = pidFile else {
            throw Failure(description: "\(config) has no pid_file, so the running process cannot be found; pass --pid PID "
                + "or --pid-file PATH, or add `pid_file: /run/fulcrum/fulcrum.pid` to the file (the running process writes it after a restart)")
        }
        let key = fromOption ? "--pid-file" : "pid_file"
        guard let text = readSmallFile(path) else {
            let reason = String(cString: strerror(errno))
            throw Failure(description: "cannot read the pid file \(path) (\(key)): \(reason); is fulcrum running on this "
                + "configuration? It writes the file once every listener is bound and removes it at exit")
        }
        let firstLine = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        guard let pid = Int32(firstLine.trimmingCharacters(in: .whitespaces)), pid > 0 else {
            throw Failure(description: "the pid file \(path) (\(key)) does not hold a process id (it reads '\(firstLine)')")
        }
        let origin = " (from pid file \(path))"
        try ensureExists(pid, origin: origin)
        // A stale pid file may name a process id the system gave to another program since: never send it a
        // SIGHUP (which ends most programs).
        let running = RunningCommand(pid: pid)
        if let running, !running.isRun {
            throw Failure(description: "process \(pid)\(origin) is not `fulcrum run` (its command line is "
                + "'\(running.arguments.joined(separator: " "))'): the pid file is stale; nothing was signalled")
        }
        return ReloadTarget(pid: pid, origin: origin, running: running)
    }

    private static func ensureExists(_ pid: Int32, origin: String) throws(Failure) {
        guard kill(pid, 0) != 0 else { return }
        switch errno {
        case ESRCH:
            let hint = origin.isEmpty ? "" : ": the pid file is stale (fulcrum is not running, or did not remove it)"
            throw Failure(description: "no process \(pid)\(origin)\(hint); nothing was signalled")
        case EPERM:
            throw Failure(description: "not permitted to signal process \(pid)\(origin): run fulcrum reload as the user that runs fulcrum")
        default:
            throw Failure(description: "cannot signal process \(pid)\(origin): \(String(cString: strerror(errno)))")
        }
    }
}
