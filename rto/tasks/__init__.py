"""Tasks with a known gold reward: the data and the judge the pipeline trains and evaluates on."""
