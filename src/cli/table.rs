//! The one way the commands print a table: a header and rows, columns padded to their widest
//! cell (at most `max_width`, longer cells overflow), two spaces apart, no trailing blanks.

/// The table as text, one line per row, each ending in a newline.
pub fn render(head: &[&str], rows: &[Vec<String>], max_width: usize) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(w.len()) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for x in &mut w {
        *x = (*x).min(max_width);
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let s: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// Prints [`render`]'s table.
pub fn print(head: &[&str], rows: &[Vec<String>], max_width: usize) {
    print!("{}", render(head, rows, max_width));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_long_cells_overflow() {
        let rows = vec![
            vec!["1".to_owned(), "acme".to_owned(), "x".to_owned()],
            vec![
                "22".to_owned(),
                "a very long name".to_owned(),
                String::new(),
            ],
        ];
        let t = render(&["ID", "NAME", "NOTE"], &rows, 8);
        assert_eq!(
            t,
            "ID  NAME      NOTE\n1   acme      x\n22  a very long name\n"
        );
    }
}
