//! Loads an HF checkpoint directory and saves it again with peftkit's writer:
//! `cargo run --example resave -- IN_DIR OUT_DIR`. The fixture script uses it to check that
//! transformers loads what peftkit writes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: resave IN_DIR OUT_DIR".into());
    };
    let opts = peftkit_models::LoadOptions::new(tch::Device::Cpu);
    let (model, report) = peftkit_models::SequenceClassifier::load(input.as_ref(), &opts)?;
    println!("{report}");
    model.save_pretrained(output.as_ref())?;
    println!("saved {output}");
    Ok(())
}
