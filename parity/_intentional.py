"""Where the implementation under test deliberately differs from torch 2.13, and why.

A case tagged with one of these keys still has to agree with the float64 reference (where the
implementation returns a value); it is reported as an intentional difference (not a pass) when
torch disagrees, and as a pass when torch agrees. Each entry was checked against torch 2.13.0 on
CPU by the case matrix itself: a difference torch no longer makes shows up as a pass.
"""

INTENTIONAL = {
    "neg_inf_prob": (
        "A -inf logit (a masked class) with probability targets: torch multiplies the target 0 "
        "by log-softmax -inf and returns NaN; the math (0 * log 0 = 0) gives a finite loss, "
        "which is what the implementation under test must return. jaxce also treats the masked "
        "class as absent in the gradient w.r.t. the targets: 0 where a target of exactly 0 "
        "meets a -inf logit, while torch and the math (d/dt_c of -t_c log p_c = -log p_c) "
        "give +inf there; that departure from the reference is waived at those positions only."
    ),
    "full_smoothing_masked": (
        "label_smoothing=1 with probability targets and a -inf logit: the smoothed target is "
        "uniform, so the loss (+inf) does not depend on the targets and their gradient is 0; "
        "torch computes it as (1 - 1) * inf and returns NaN."
    ),
    "fp16_accumulation": (
        "float16 over 70k rows: torch on CPU accumulates the loss sum (and the weight total) in "
        "float16, which overflows at 65504 and gives inf/inf = NaN or inf for the mean; the "
        "implementation under test accumulates in float32 and rounds the mean once."
    ),
    "ignore_index_prob": (
        "A negative ignore_index other than the default -100 with probability targets: torch "
        "2.13 accepts it and does not use it (it raises RuntimeError only for ignore_index >= "
        "0); jaxce raises ValueError for any ignore_index but the default, since the option "
        "cannot apply to probabilities (drop examples with where=). Both refuse ignore_index >= "
        "0 (a passing case of the matrix)."
    ),
    "chunked_all_ignored": (
        "F.linear_cross_entropy on torch's chunked path (options=LinearCrossEntropyOptions()) "
        "with reduction='mean' and every target equal to ignore_index: torch returns NaN "
        "gradients w.r.t. input, linear_weight and linear_bias (each row's factor is its "
        "weight divided by the kept weight total, and a total of 0 is replaced by NaN); its "
        "reference path and the math give 0 (the numerator does not depend on the inputs), "
        "as jaxce does. Both return the value 0/0 = NaN."
    ),
}

# Quantities in which an intentional difference may also depart from the float64 reference,
# at the positions where the reference is not finite (everywhere else it must still agree).
OFF_REFERENCE = {"neg_inf_prob": ("grad_target",)}

# Intentional differences that are the implementation refusing the input, with the error it
# raises: there raising is the difference itself; in every other case raising fails the case.
REFUSALS = {"ignore_index_prob": ValueError}
