//! Loads a peft adapter (any method peftkit reads) onto a base checkpoint and saves it again with
//! peftkit's writer: `cargo run --example resave_adapter -- BASE_DIR ADAPTER_DIR OUT_DIR`. The fixture
//! script uses it to check that Python peft loads what peftkit writes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, adapter, out] = args.as_slice() else {
        return Err("usage: resave_adapter BASE_DIR ADAPTER_DIR OUT_DIR".into());
    };
    let opts = peftkit_models::LoadOptions::new(tch::Device::Cpu);
    let (model, _) = peftkit_models::SequenceClassifier::load(base.as_ref(), &opts)?;
    let peft = peftkit_adapters::PeftModel::from_pretrained(model, adapter.as_ref())?;
    peft.save_pretrained(out.as_ref(), Some(base), None)?;
    println!("saved {out}");
    Ok(())
}
