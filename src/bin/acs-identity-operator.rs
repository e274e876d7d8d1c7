fn main() {
    eprintln!("acs-identity-operator: the controller is not built yet");
    std::process::exit(2);
}
