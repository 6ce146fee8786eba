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
            upgrade_socket to start `BINARY run --config FILE --upgrade-from SOCKET` as its own child. The \
            new process takes over every listening socket; once its workers run, the old one drains as on \
            SIGTERM. Exits 0 once the new process serves, 1 if it could not start (the old one then goes \
            on serving, unchanged).
            """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: ArgumentHelp("The new binary (default: this one).", valueName: "path"))
        var binary: String?

        @Option(help: ArgumentHelp("The new process's log level.", valueName: "level"))
        var logLevel: String = "info"

        @Option(help: ArgumentHelp("Seconds to wait for each step.", valueName: "seconds"))
        var timeout: Int = 60

        func validate() throws {
            guard Logger.Level(rawValue: logLevel) != nil else {
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
            let arguments = [program, "run", "--config", configPath, "--upgrade-from", socket, "--log-level", logLevel]
            do {
                let pid = try Handover.requestUpgrade(path: socket, arguments: arguments,
                                                      timeoutMicroseconds: Int64(timeout) * 1_000_000) { event in
                    if case .started(let pid) = event { print("started \(program) as process \(pid)") }
                }
                print("upgrade done: process \(pid) serves every listener; the old process drains and exits")
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
