import ArgumentParser
import FerryCopy
import FerryStorage
import FerrySystem
import Foundation
import SystemPackage

extension VerifyMode: ExpressibleByArgument {}

/// `ferry copy SRC... DEST`: `cp -a` semantics, through the staged, verified, durable engine.
struct CopyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy files and trees: staged beside the destination, verified, then published atomically.",
        discussion: """
            Like `cp -a`: DEST is an existing directory (each SOURCE lands inside it) or, with one \
            SOURCE, a new name. Everything is copied into .ferry-staging-<id> in the destination \
            directory, compared with the source, flushed with one syncfs, and renamed into place \
            without ever replacing an existing name. On any failure nothing is left behind.
            Exit status: 0 done, 1 failed (nothing half-visible left), 2 bad usage, 130 interrupted.
            """)

    @Argument(help: "Sources, then the destination.") var paths: [String]
    @Flag(help: "Print one JSON summary instead of progress.") var json = false
    @Option(help: "How to verify before publishing: metadata or checksum.") var verify: VerifyMode = .metadata
    @Option(help: "Parallel copiers (default: two per core).") var jobs: Int?
    @Flag(help: "Skip the free-space and free-inode check before copying.") var noSpaceCheck = false
    @OptionGroup var storageOptions: StorageOptions

    func validate() throws {
        if paths.count < 2 { throw ValidationError("give at least one source and a destination") }
        if let jobs, jobs < 1 || jobs > 1024 { throw ValidationError("--jobs must be between 1 and 1024") }
    }

    func run() throws {
        let configuration = try storageOptions.loadConfiguration()
        let plan: CopyPlan
        do {
            plan = try CopyPlan(arguments: paths.map { Array($0.utf8) })
        } catch let error as CopyPlan.UsageError {
            printError("ferry copy: \(error.message)")
            throw ExitCode(FerryCommand.Status.usage.rawValue)
        } catch {
            fail("\(error)")
        }
        defer { plan.close() }

        let storage = try? storageOptions.backend(for: plan.destination, path: plan.destinationPath, configuration: configuration)
        let cancellation = CancellationFlag()
        let interrupt = InterruptWatcher { cancellation.cancel() }
        defer { interrupt.stop() }
        let bar = ProgressBar(enabled: !json && isatty(STDERR_FILENO) == 1)
        let options = CopyOptions(
            jobs: jobs, verify: verify, layoutCloner: storage.map { StorageLayoutCloner(backend: $0) },
            cancellation: cancellation)
        let engine = CopyEngine(options: options, progress: { bar.update($0) })

        var measured: TreeMeasurement?
        if !noSpaceCheck, let storage {
            do {
                let measurement = try engine.measure(plan.sources)
                measured = measurement
                if let refusal = SpaceCheck.refusal(measurement: measurement, quota: try storage.quota(of: plan.destination, path: plan.destinationPath)) {
                    bar.finish()
                    fail(refusal)
                }
            } catch let error as CopyError {
                bar.finish()
                fail(error.description)
            } catch {
                // Quota unknown: the copy itself will stop cleanly at ENOSPC/EDQUOT.
            }
        }

        do {
            let report = try engine.copy(plan.sources, to: plan.destination, measurement: measured)
            bar.finish()
            if json {
                printJSON(Self.summary(report, plan: plan))
            } else {
                let what = "\(Format.count(report.measurement.entries)) entries, \(Format.bytes(report.bytesCopied))"
                let rate = report.seconds > 0 ? " (\(Format.bytes(UInt64(Double(report.bytesCopied) / report.seconds)))/s)" : ""
                printError("copied \(what) in \(String(format: "%.2f", report.seconds)) s\(rate), verified (\(report.verify.rawValue)), durable")
                if !report.ownershipPreserved { printError("note: ownership not preserved (not running as root); the copies belong to you") }
                for note in report.notes { printError("note: \(note)") }
                if report.noteCount > report.notes.count { printError("note: … and \(report.noteCount - report.notes.count) more") }
            }
        } catch {
            bar.finish()
            if case .cancelled = error {
                printError("ferry copy: interrupted; everything the copy had created was removed")
                if json { printJSON(["status": "cancelled", "error": ["code": "cancelled", "message": error.description] as [String: Any?]]) }
                throw ExitCode(FerryCommand.Status.interrupted.rawValue)
            }
            if json { printJSON(["status": "failed", "error": Self.errorJSON(error)]) }
            fail(error.description)
        }
    }

    private func fail(_ message: String) -> Never {
        printError("ferry copy: \(message)")
        Foundation.exit(FerryCommand.Status.failure.rawValue)
    }

    static func errorJSON(_ error: CopyError) -> [String: Any?] {
        let code: String
        switch error {
        case .system(_, let system): code = "\(system.code)"
        case .sourceChanged: code = "sourceChanged"
        case .verificationFailed: code = "verificationFailed"
        case .destinationExists: code = "destinationExists"
        case .unsupportedEntry: code = "unsupportedEntry"
        case .cancelled: code = "cancelled"
        }
        return ["code": code, "message": error.description]
    }

    static func summary(_ report: CopyReport, plan: CopyPlan) -> [String: Any?] {
        [
            "status": "completed",
            "destination": String(decoding: plan.destinationPath, as: UTF8.self),
            "published": report.published.map { PathDisplay.string($0) },
            "bytes": report.bytesCopied,
            "entries": report.measurement.entries,
            "files": report.measurement.files,
            "directories": report.measurement.directories,
            "seconds": report.seconds,
            "bytesPerSecond": report.seconds > 0 ? Double(report.bytesCopied) / report.seconds : nil,
            "verify": report.verify.rawValue,
            "ownershipPreserved": report.ownershipPreserved,
            "phaseSeconds": report.phaseSeconds,
            "notes": report.notes,
        ]
    }
}

/// The destination's free bytes and inodes against what the copy needs.
enum SpaceCheck {
    static func refusal(measurement: TreeMeasurement, quota: QuotaReport) -> String? {
        let where_ = quota.projectID.map { quota.source == .statvfs ? "the destination filesystem" : "destination project \($0)" } ?? "the destination filesystem"
        if let free = quota.bytesFree, measurement.allocatedBytes > free {
            return "\(where_) has \(Format.bytes(free)) free; the copy needs \(Format.bytes(measurement.allocatedBytes)). Free space there or ask for more quota; nothing was copied."
        }
        if let free = quota.inodesFree, measurement.inodes > free {
            return "\(where_) has \(Format.count(free)) inodes free; the copy needs \(Format.count(measurement.inodes)). Nothing was copied."
        }
        return nil
    }
}

/// Adapts a storage backend's layout cloning to the copy engine's hook.
struct StorageLayoutCloner: LayoutCloner {
    let backend: any StorageBackend
    var layoutAttributeNames: Set<ByteString> { backend.layoutAttributeNames }
    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws {
        try backend.cloneLayout(from: source, to: destination)
    }
}
