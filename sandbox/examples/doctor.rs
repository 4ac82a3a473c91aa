//! Prints which sandbox layers are active on this machine.

fn main() {
    match verdict_sandbox::Sandbox::new(verdict_sandbox::SandboxConfig::default()) {
        Ok(sb) => {
            for layer in sb.report() {
                println!(
                    "{:<14} {:<8} {}",
                    layer.name,
                    if layer.active { "active" } else { "INACTIVE" },
                    layer.detail
                );
            }
        }
        Err(e) => {
            eprintln!("sandbox unavailable: {e}");
            std::process::exit(1);
        }
    }
}
