"""What more than one family shares: the logit-method base (`ClassifierMethod`: a student and a
teacher giving logits) and the logit methods the classifier family runs on images and the encoder
family on a text classifier's head (scratch, kd, dkd, ls_kd, dist). Importing a module registers
its method under the classifier family; the encoder family registers the same classes again."""
