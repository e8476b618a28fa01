fn main() {
    let mut c = facemark::train::TrainConfig::study(facemark::train::Task::Nose);
    c.epochs = 5;
    let t = std::time::Instant::now();
    let data = facemark::train::TaskData::load(&c, std::path::Path::new("/work/shared/data/imm_face_db")).unwrap();
    eprintln!("load {:?}", t.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let run = facemark::run::RunDir::new(dir.path());
    let t = std::time::Instant::now();
    let out = facemark::train::train(&c, &data, &run, false, false).unwrap();
    eprintln!("train {:?}", t.elapsed());
    for r in &out.state.history { eprintln!("{:?}", r); }
}
