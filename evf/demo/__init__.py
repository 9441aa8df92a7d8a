"""``evf demo``: a Gradio page that segments uploaded images with a trained or released model.

    evf demo --ckpt_path runs/x/checkpoints/last.ckpt          # http://127.0.0.1:7860
    evf demo --pretrained exported/evf-sam --host 0.0.0.0 --port 8080

`evf.demo.session` holds the work (encode once per image, prompts, downloads) and imports no
Gradio; `evf.demo.app` is the page; `evf.demo.cli` the command. Gradio is the optional extra
``evf[demo]``. docs/demo.md shows the page.
"""
