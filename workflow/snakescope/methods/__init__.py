"""Methods more than one stage (or watch mode) computes: instance segmentation and measurements, large fields block by
block, larger inference tiles and the engines that run them, one batch's vision-model reviews. Below the stages, above
the LLM client and the floor."""
