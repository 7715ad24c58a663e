import ArgumentParser
import FerryConfig
import FerryJobs
import FerryServer
import FerrySystem
import Foundation
import Logging

/// `ferry serve`: the web UI and REST API, with task runners and the janitor, until SIGTERM.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the web UI and REST API; run tasks as the users who asked for them.",
        discussion: "Every configuration key can be overridden by its FERRY_… environment variable (see the README).")

    @Option(help: "Address to listen on, HOST:PORT (port 0: any free port).") var listen: String?
    @Option(help: "Tasks run at once by this server (0: serve only; workers run elsewhere).") var workers: Int?
    @Flag(help: "Create and serve a demo sandbox (as root: a loop-mounted XFS with three projects) with an embedded database.") var demo = false
    @Option(help: "Where --demo keeps its sandbox.") var demoDirectory = "demo-sandbox"
    @OptionGroup var storageOptions: StorageOptions
    @OptionGroup var databaseOptions: DatabaseOptions

    func run() async throws {
        LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        let logger = Logger(label: "ferry.serve")
        var configuration: FerryConfiguration
        var sandbox: DemoSandbox?
        if demo {
            let directory = URL(fileURLWithPath: demoDirectory, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL.path
            let created = DemoSandbox(directory: directory)
            do {
                configuration = try created.prepare { say("ferry serve --demo: \($0)") }
            } catch {
                throw ServeFailure(description: "ferry serve --demo: \(error)")
            }
            sandbox = created
        } else {
            configuration = try storageOptions.loadConfiguration()
            if let file = FerryConfiguration.locate(explicit: storageOptions.config) {
                do { try configuration.serve.checkInlineSecrets(file: file, environment: ProcessInfo.processInfo.environment) } catch {
                    throw ValidationError("\(error)")
                }
            }
        }
        do { configuration = try configuration.applyingEnvironment(ProcessInfo.processInfo.environment) } catch {
            throw ValidationError("\(error)")
        }
        if let listen { configuration.serve.listen = listen }
        // The command line over the file and the environment, as for every other command: the
        // helpers and task processes get the `lfs` program and backend from the configuration.
        if let lfs = storageOptions.lfs, !lfs.isEmpty { configuration.lfsPath = lfs }
        if let backend = storageOptions.backend {
            for index in configuration.roots.indices { configuration.roots[index].backend = backend }
        }
        if configuration.roots.isEmpty {
            throw ValidationError("no [[roots]] in the configuration: name the directories users may browse, or try ferry serve --demo")
        }
        if let lease = databaseOptions.lease { configuration.serve.leaseSeconds = lease }
        var databaseOptions = databaseOptions
        if demo && databaseOptions.database == nil {
            // The demo's tasks live in its sandbox: FERRY_DATABASE_URL (a site's real database,
            // set in the shell) is not served, and its tasks not run, by a demo.
            if !(ProcessInfo.processInfo.environment["FERRY_DATABASE_URL"] ?? "").isEmpty {
                say("ferry serve --demo: FERRY_DATABASE_URL is not used: the demo keeps its tasks in its sandbox (--database chooses another)")
            }
            databaseOptions.database = configuration.database
        }
        let store = try await databaseOptions.open(configuration: configuration)
        let executable = ferryExecutable()
        let demoSandbox = sandbox
        defer { demoSandbox?.shutdown() }
        let options = FerryServer.Options(
            configuration: configuration, store: store, executable: executable,
            workers: workers ?? configuration.serve.workers, logger: logger
        ) { url, login in
            say("ferry serve: listening on \(url)")
            if let login { say("ferry serve: log in at \(login)") }
            if let sandbox = demoSandbox { say("ferry serve: demo sandbox in \(sandbox.directory) (projects in \(sandbox.projects)); stop with Ctrl-C") }
        }
        do {
            try await FerryServer.run(options)
        } catch let error as APIError {
            throw ServeFailure(description: "ferry serve: \(error.message)")
        }
    }
}

struct ServeFailure: Error, CustomStringConvertible { var description: String }

/// Prints a line to standard output at once (the tests and the demo read it as it comes).
private func say(_ line: String) {
    Console.standardOutput(line + "\n")
}

/// `ferry agent`: the processes `ferry serve` starts with a user's identity. Not for people.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Internal: the per-user processes of ferry serve.", shouldDisplay: false,
        subcommands: [Request.self, RunTask.self])

    struct Request: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "request", abstract: "Answer one filesystem request read from standard input.")
        func run() throws { throw ExitCode(AgentMain.request()) }
    }

    struct RunTask: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run-task", abstract: "Run one claimed task through the server's relay.")
        func run() async throws {
            throw ExitCode(await AgentMain.runTask(settingsJSON: ProcessInfo.processInfo.environment[RunTaskSettings.variable] ?? ""))
        }
    }
}
