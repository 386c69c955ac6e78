//! ZIP archives: a minimal writer (stored entries, no compression: the adapter folder or a
//! merged model as one download; safetensors and JSON compress poorly enough that storing
//! keeps it simple and exact), and a reader of the archives people have (stored or deflated
//! entries: an adapter folder zipped by hand, or by webtune).

use crate::error::{Error, Result};

/// CRC-32 (IEEE), as ZIP requires.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The files of a ZIP archive `bytes` (named `file` in errors): `(path, contents)` for each
/// entry that is a file, read only up to `max_entry` bytes each. ZIP64 and encrypted entries
/// are refused; a CRC that does not match is an error.
pub fn read(file: &str, bytes: &[u8], max_entry: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |problem: &str| Error::format(file, format!("not a readable ZIP archive: {problem}"));
    let u16_at = |at: usize| -> Result<u16> {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("it ends early"))
    };
    let u32_at = |at: usize| -> Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("it ends early"))
    };
    // The end of central directory record: 22 bytes, then a comment of up to 64 KiB.
    if bytes.len() < 22 {
        return Err(bad("it ends early"));
    }
    let lowest = bytes.len().saturating_sub(22 + 0xffff);
    let end = (lowest..=bytes.len() - 22)
        .rev()
        .find(|&at| bytes[at..at + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no end of central directory"))?;
    let entries = usize::from(u16_at(end + 10)?);
    let mut at = u32_at(end + 16)? as usize;
    let mut out = Vec::new();
    for _ in 0..entries {
        if u32_at(at)? != 0x0201_4b50 {
            return Err(bad("a broken central directory"));
        }
        let (flags, method) = (u16_at(at + 8)?, u16_at(at + 10)?);
        let crc = u32_at(at + 16)?;
        let (packed, size) = (u32_at(at + 20)? as usize, u32_at(at + 24)? as usize);
        let name_len = usize::from(u16_at(at + 28)?);
        let skip = name_len + usize::from(u16_at(at + 30)?) + usize::from(u16_at(at + 32)?);
        let local = u32_at(at + 42)? as usize;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| bad("it ends early"))?;
        let name = String::from_utf8_lossy(name).to_string();
        at += 46 + skip;
        if name.ends_with('/') {
            continue; // a folder
        }
        if flags & 1 != 0 {
            return Err(bad(&format!("`{name}` is encrypted")));
        }
        if packed == u32::MAX as usize || size == u32::MAX as usize {
            return Err(bad(&format!("`{name}` is in ZIP64, which is not read")));
        }
        if size > max_entry {
            return Err(Error::format(
                file,
                format!("`{name}` is {size} bytes, more than the {max_entry} read"),
            ));
        }
        if u32_at(local)? != 0x0403_4b50 {
            return Err(bad(&format!("`{name}` has no local header")));
        }
        let data_at =
            local + 30 + usize::from(u16_at(local + 26)?) + usize::from(u16_at(local + 28)?);
        let data = bytes
            .get(data_at..data_at.saturating_add(packed))
            .ok_or_else(|| bad(&format!("`{name}` ends early")))?;
        let contents = match method {
            0 => data.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
                .map_err(|e| bad(&format!("`{name}` does not inflate ({e:?})")))?,
            other => return Err(bad(&format!("`{name}` uses compression method {other}"))),
        };
        if contents.len() != size || crc32(&contents) != crc {
            return Err(bad(&format!("`{name}` does not match its size and CRC")));
        }
        out.push((name, contents));
    }
    Ok(out)
}

/// A ZIP archive of `files` (name, contents), every entry stored.
pub fn write_stored(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let len = data.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // method: stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend(len.to_le_bytes());
            h.extend(len.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra length
            if central {
                h.extend(0u16.to_le_bytes()); // comment length
                h.extend(0u16.to_le_bytes()); // disk
                h.extend(0u16.to_le_bytes()); // internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x0201_4b50, true));
    }
    let central_offset = out.len() as u32;
    let central_len = central.len() as u32;
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // disk numbers
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend(central_len.to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32/ISO-HDLC check value of "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn archive_has_local_headers_data_and_a_directory() {
        let zip = write_stored(&[("a.json", b"{}"), ("b.bin", &[1, 2, 3])]);
        assert_eq!(&zip[..4], b"PK\x03\x04");
        let end = zip.len() - 22;
        assert_eq!(&zip[end..end + 4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([zip[end + 10], zip[end + 11]]), 2);
        assert!(zip.windows(6).any(|w| w == b"a.json"));
    }

    #[test]
    fn what_is_written_reads_back_and_damage_is_an_error() {
        let zip = write_stored(&[("dir/a.json", b"{}"), ("b.bin", &[1, 2, 3])]);
        let files = read("a.zip", &zip, 1 << 20).unwrap();
        assert_eq!(files[0], ("dir/a.json".to_string(), b"{}".to_vec()));
        assert_eq!(files[1].1, [1, 2, 3]);
        assert!(
            read("a.zip", &zip, 2)
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
        // A byte of the first entry's data: its CRC no longer matches.
        let mut broken = zip.clone();
        broken[30 + "dir/a.json".len()] ^= 0xff;
        let e = read("a.zip", &broken, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        for len in [0, 10, zip.len() / 2] {
            assert!(read("a.zip", &zip[..len], 1 << 20).is_err());
        }
    }

    #[test]
    fn a_deflated_entry_is_inflated() {
        // A one-entry archive with a deflated entry (method 8), as zip tools write one.
        let data = b"hello hello hello hello hello";
        let packed = miniz_oxide::deflate::compress_to_vec(data, 6);
        let mut zip = Vec::new();
        let crc = crc32(data);
        let local = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend(20u16.to_le_bytes());
            h.extend(0u16.to_le_bytes());
            h.extend(8u16.to_le_bytes());
            h.extend([0u8; 4]);
            h.extend(crc.to_le_bytes());
            h.extend((packed.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend(5u16.to_le_bytes());
            h.extend(0u16.to_le_bytes());
            if central {
                h.extend([0u8; 12]);
                h.extend(0u32.to_le_bytes());
            }
            h.extend(b"a.txt");
            h
        };
        zip.extend(local(0x0403_4b50, false));
        zip.extend(&packed);
        let dir = zip.len() as u32;
        let central = local(0x0201_4b50, true);
        zip.extend(&central);
        zip.extend(0x0605_4b50u32.to_le_bytes());
        zip.extend([0u8; 4]);
        zip.extend(1u16.to_le_bytes());
        zip.extend(1u16.to_le_bytes());
        zip.extend((central.len() as u32).to_le_bytes());
        zip.extend(dir.to_le_bytes());
        zip.extend(0u16.to_le_bytes());
        assert_eq!(read("d.zip", &zip, 100).unwrap()[0].1, data);
    }
}
