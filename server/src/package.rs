//! Kattis problem packages (filled in step 5).
