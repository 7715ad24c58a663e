import Foundation

/// Reads `lfs find DIR --layout released --print0` output.
///
/// lfs find prints NUL-separated with --print0 (source: lustre-release lustre/doc/lfs-find.1,
/// "--print0|-0: Print full file name to standard output if it matches the specified
/// parameters, followed by a NUL character"; `--print0` and `-0` are the same option).
/// Paths are raw bytes (Linux paths need not be UTF-8), so they stay `[UInt8]`.
public enum LfsFindParser {
    /// Splits on NUL and drops empty pieces (the trailing terminator yields one).
    public static func parsePrint0(_ data: [UInt8]) -> [[UInt8]] {
        data.split(separator: 0, omittingEmptySubsequences: true).map(Array.init)
    }
}
