import ArgumentParser
import EventLoop
import Fulcrum
import FulcrumCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

extension FulcrumCommand {
    /// Binary upgrade started by the running process itself, so that the new process is its child: under
    /// systemd it then belongs to the service's cgroup and may become its main process (MAINPID=).
    struct Upgrade: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the running Fulcrum with this binary without refusing a connection.",
            discussion: """
            Validates the configuration file with this binary, then asks the Fulcrum that serves its \
            upgrade_socket to start `BINARY run --config FILE --upgrade-from SOCKET --log-level LEVEL` as \
            its own child, with the running process's own --config (FILE must be that file: another one is \
            refused) and, unless --log-level is given, its log level. The new process takes over every \
            listening socket; once its workers run, the old one drains as on SIGTERM. Exits 0 once the new \
            process serves, 1 if it could not start (the old one then goes on serving, unchanged).
            """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: ArgumentHelp("The new binary (default: this one).", valueName: "path"))
        var binary: String?

        @Option(help: ArgumentHelp("The new process's log level (default: the running process's).", valueName: "level"))
        var logLevel: String?

        @Option(help: ArgumentHelp("Seconds to wait for each step.", valueName: "seconds"))
        var timeout: Int = 60

        func validate() throws {
            if let logLevel, Logger.Level(rawValue: logLevel) == nil {
                throw ValidationError("'\(logLevel)' is not a log level; use trace, debug, info, notice, warning, error or critical")
            }
            guard timeout > 0 else { throw ValidationError("--timeout must be at least 1 second") }
        }

        func run() throws {
            let config: FulcrumConfig
            do {
                config = try ConfigFile.load(path: options.config)
            } catch {
                printError("not upgrading: the configuration is invalid\n\(error)")
                throw ExitCode(1)
            }
            guard let socket = config.upgradeSocket else {
                printError("not upgrading: \(options.config) sets no upgrade_socket; add e.g. upgrade_socket: /run/fulcrum/upgrade.sock and restart once")
                throw ExitCode(1)
            }
            guard let program = absolutePath(binary ?? "/proc/self/exe", resolve: binary == nil),
                  let configPath = absolutePath(options.config, resolve: false) else {
                printError("not upgrading: cannot resolve the binary's or the configuration's path")
                throw ExitCode(1)
            }
            do {
                let request = try UpgradeRequest(path: socket, timeoutMicroseconds: Int64(timeout) * 1_000_000)
                // The new process runs what the running one runs: its file (by the path it was given) and,
                // unless told otherwise, its log level.
                let running = RunningCommand(pid: request.serverPID)
                let origin = " (serving upgrade_socket \(socket))"
                if let problem = running?.otherConfigProblem(options.config, command: "upgrade", origin: origin,
                                                             nothing: "nothing was started") {
                    printError("not upgrading: \(problem)")
                    throw ExitCode(1)
                }
                var arguments = [program, "run", "--config", running?.config ?? configPath, "--upgrade-from", socket]
                if let level = logLevel ?? running?.logLevel { arguments += ["--log-level", level] }
                let pid = try request.start(arguments) { event in
                    if case .started(let pid) = event { print("started \(program) as process \(pid)") }
                }
                print("upgrade done: process \(pid) serves every listener; the old process drains and exits")
            } catch let exit as ExitCode {
                throw exit
            } catch {
                printError("not upgraded: \(error); the running process goes on serving")
                throw ExitCode(1)
            }
        }

        /// `path` made absolute against the working directory, or (`resolve`) with every link followed.
        private func absolutePath(_ path: String, resolve: Bool) -> String? {
            if resolve {
                guard let real = realpath(path, nil) else { return nil }
                defer { free(real) }
                return String(cString: real)
            }
            if path.hasPrefix("/") { return path }
            guard let directory = getcwd(nil, 0) else { return nil }
            defer { free(directory) }
            return String(cString: directory) + "/" + path
        }
    }
}
